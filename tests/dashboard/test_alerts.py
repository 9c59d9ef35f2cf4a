"""What the dashboard tells operators on every page, over plain HTTP: a spent daily token
budget, the backlog of messages waiting for a reply, a contact flagged for flooding, and the
budget's settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from platica.models import utcnow
from tests.conftest import Database, LiveServer, make_settings
from tests.dashboard.client import DashboardClient
from tests.factories import inbound_form, post_signed
from tests.polling import wait_for

ADMIN_TOKEN = "admin-alerts-7c3d2e5f4e1f0a9b"
FLOODER = "+34611000999"


@pytest.fixture
def server(database_url, live_server) -> LiveServer:
    started: LiveServer = live_server(
        make_settings(database_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN, RATE_LIMIT_FLOOD="3/minute"),
        worker=False,
    )
    return started


@pytest.fixture
def operator(server) -> Iterator[DashboardClient]:
    client = DashboardClient(server)
    assert client.log_in(ADMIN_TOKEN).status_code in (200, 303)
    yield client
    client.close()


def send(server: LiveServer, operator: DashboardClient, sender: str, body: str) -> None:
    form = inbound_form("sms", sender=sender, body=body)
    response = post_signed(operator.http, server.url, "/webhook/sms", form)
    assert response.status_code == 200, response.text


class TestBudgetBanner:
    def test_a_spent_budget_shows_on_every_page(self, server, operator, database: Database):
        assert "token budget" not in operator.http.get("/").text
        database.execute(
            "UPDATE channel_configs SET daily_token_budget = 500, tokens_used = 612,"
            " tokens_day = :today WHERE channel = 'sms'",
            today=utcnow().date(),
        )

        for page in ("/", "/stats", "/settings"):
            text = operator.http.get(page).text
            assert "SMS: today&#39;s token budget (500 tokens) is spent" in text, page
            assert "busy message" in text

    def test_yesterdays_spending_is_not_today(self, server, operator, database: Database):
        database.execute(
            "UPDATE channel_configs SET daily_token_budget = 500, tokens_used = 612,"
            " tokens_day = :yesterday",
            yesterday=utcnow().date() - timedelta(days=1),
        )

        assert "token budget" not in operator.http.get("/").text


class TestBacklog:
    def test_the_inbox_counts_messages_waiting_for_a_reply(self, server, operator, database):
        for index in range(3):
            send(server, operator, f"+3460000{index:04d}", "Hola")

        text = operator.http.get("/").text
        assert "3 messages waiting for a reply" in text
        assert "waiting for a reply, the oldest" not in text  # no banner: not slow yet

        database.execute(
            "UPDATE messages SET created_at = :long_ago", long_ago=utcnow() - timedelta(minutes=7)
        )
        banner = operator.http.get("/stats").text
        assert "3 messages waiting for a reply, the oldest for 7 min" in banner


class TestFlaggedContact:
    def test_a_flooding_contact_is_flagged_in_the_inbox_and_the_conversation(
        self, server, operator, database
    ):
        for index in range(5):
            send(server, operator, FLOODER, f"flood {index}")

        assert "Flagged: flood" in operator.http.get("/").text
        conversation = database.scalar("SELECT id FROM conversations")
        page = operator.http.get(f"/conversations/sms/{conversation}").text
        assert "the contact sent more than RATE_LIMIT_FLOOD allows" in page
        skipped = database.scalar(
            "SELECT count(*) FROM messages WHERE reply_state = 'skipped' AND note LIKE 'flood:%'"
        )
        assert skipped == 2


class TestBudgetSettings:
    def test_the_budget_and_busy_message_are_edited_and_checked(self, server, operator, database):
        def save(**values: str):
            current = {
                "system_prompt": "Eres el asistente de la Panadería Sol.",
                "openai_model": "",
                "max_tokens": "300",
                "temperature": "0.7",
                "context_messages": "10",
                "debounce_seconds": "2",
                "sms_max_chars": "160",
                "fallback_message": "Perdona, ahora no podemos responder.",
                "help_message": "Escribe tu pregunta.",
                "handoff_timeout_minutes": "60",
                "daily_token_budget": "",
                "busy_message": "Hoy estamos desbordados; te respondemos mañana.",
                "ai_enabled": "on",
            }
            return operator.post_form("/settings/sms", "/settings", {**current, **values})

        refused = save(daily_token_budget="0")
        assert refused.status_code == 422
        assert "Daily token budget: must be at least 1" in refused.text

        assert save(daily_token_budget="20000").status_code in (200, 303)
        wait_for(
            lambda: (
                database.scalar(
                    "SELECT daily_token_budget FROM channel_configs WHERE channel = 'sms'"
                )
                == 20000
            ),
            "the budget saved",
        )
        assert database.scalar(
            "SELECT busy_message FROM channel_configs WHERE channel = 'sms'"
        ) == ("Hoy estamos desbordados; te respondemos mañana.")
        assert save(daily_token_budget="").status_code in (200, 303)
        assert (
            database.scalar("SELECT daily_token_budget FROM channel_configs WHERE channel = 'sms'")
            is None
        )
