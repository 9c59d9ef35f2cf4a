"""Abuse limits: the limiter itself, a flood over real HTTP that leaves other senders answered,
and the API's 429 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from platica import db
from platica.accounts import create_api_key
from platica.config import ConfigError, load_settings
from platica.models import Account
from platica.ratelimit import MovingWindow, RateLimits
from tests.conftest import Database, make_settings
from tests.factories import CONTACT, inbound_form, post_signed
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.polling import wait_for
from tests.replies.test_pipeline import Stack

FLOODER = "+34611000999"
ADMIN_TOKEN = "admin-0f3e5d7c9b-1a2b3c4d5e6f"


LOW_LIMITS = {
    "RATE_LIMIT_PER_SENDER": "5/minute",
    "RATE_LIMIT_PER_ACCOUNT": "12/minute",
    "RATE_LIMIT_API": "3/minute",
}


def low_limits(**overrides: str) -> RateLimits:
    return RateLimits(load_settings(_env_file=None, **{**LOW_LIMITS, **overrides}))


class TestRateLimits:
    def test_the_sender_window_counts_on_then_starts_again(self):
        window = low_limits().sender
        start = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

        assert (window.limit, window.seconds) == (5, 60)
        assert window.next_count(None, 0, start) == (start, 1)
        later = start + timedelta(seconds=59)
        assert window.next_count(start, 5, later) == (start, 6)
        expired = start + timedelta(seconds=60)
        assert window.next_count(start, 6, expired) == (expired, 1)

    def test_an_account_over_its_limit(self):
        limits = low_limits()
        account = uuid.uuid4()
        for _ in range(12):
            assert not limits.account_over(account)
            limits.count_for_account(account)

        assert limits.account_over(account)
        assert not limits.account_over(uuid.uuid4())
        assert not limits.account_over(None)

    def test_the_account_window_moves(self, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("platica.ratelimit.time.monotonic", lambda: clock[0])
        window = MovingWindow(limit=3, seconds=60)
        for moment in (0, 20, 40):
            clock[0] = 1000.0 + moment
            window.hit("account")

        assert window.over("account")
        clock[0] = 1000.0 + 59.9
        assert window.over("account")
        # The first of the three leaves the window: room for one more, not two.
        clock[0] = 1000.0 + 60.1
        assert not window.over("account")
        window.hit("account")
        assert window.over("account")
        assert not window.over("another account")

    def test_looking_counts_nothing(self):
        limits = low_limits()
        account = uuid.uuid4()

        assert not any(limits.account_over(account) for _ in range(50))

    def test_api_calls_per_credential(self):
        limits = low_limits()

        assert [limits.api("key-a") for _ in range(3)] == [None] * 3
        retry_after = limits.api("key-a")

        assert retry_after is not None
        assert 1 <= retry_after <= 60
        assert limits.api("key-b") is None

    def test_each_server_counts_for_itself(self):
        first, second = low_limits(), low_limits()
        for _ in range(3):
            first.api("key")

        assert first.api("key") is not None
        assert second.api("key") is None

    def test_off_means_no_limit(self):
        limits = low_limits(
            RATE_LIMIT_PER_SENDER="off", RATE_LIMIT_PER_ACCOUNT="off", RATE_LIMIT_API="off"
        )
        account = uuid.uuid4()
        for _ in range(100):
            limits.count_for_account(account)

        assert not limits.account_over(account)
        assert all(limits.api("key") is None for _ in range(100))
        assert limits.sender.limit > 10**9
        assert limits.api_limit == "unlimited"

    @pytest.mark.parametrize("value", ["20 a minute", "0/minute", "-1/second", "lots"])
    def test_a_malformed_limit_stops_start_up_naming_the_variable(self, value):
        with pytest.raises(ConfigError, match="RATE_LIMIT_PER_SENDER: must look like"):
            load_settings(_env_file=None, RATE_LIMIT_PER_SENDER=value)


class Records(logging.Handler):
    """Keeps the structlog event dicts that reach the standard library's root logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append(record.msg)


@pytest.fixture
def flood_stack(database_url, live_server) -> Iterator[Stack]:
    with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
        settings = make_settings(
            database_url,
            OPENAI_BASE_URL=openai.url,
            OPENAI_API_KEY="sk-local-0123456789",
            TWILIO_API_BASE_URL=twilio.url,
            PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
            LOG_LEVEL="INFO",
            **LOW_LIMITS,
        )
        server = live_server(settings)
        database = Database(database_url)
        with httpx.Client(timeout=30) as client:
            stack = Stack(server, openai, twilio, database, client)
            stack.configure(debounce_seconds=0)
            yield stack
        database.engine.dispose()


@pytest.fixture
def log_records() -> Iterator[Records]:
    """Request it after the server: creating the app resets the root logger's handlers."""
    records = Records()
    logging.getLogger().addHandler(records)
    yield records
    logging.getLogger().removeHandler(records)


class TestFlood:
    def test_a_flooding_sender_does_not_silence_the_others(self, flood_stack, log_records):
        stack = flood_stack
        for index in range(30):
            stack.send(sender=FLOODER, body=f"flood {index}")
        stack.send(sender=CONTACT, body="¿Abren hoy?")

        wait_for(lambda: stack.sent_to(CONTACT), "the other sender's reply")
        wait_for(stack.settled, "every message settled")
        assert [m["body"] for m in stack.sent_to(CONTACT)] == ["Echo: ¿Abren hoy?"]
        flood = stack.database.rows(
            "SELECT m.body, m.reply_state, m.note FROM messages m"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE m.direction = 'inbound' AND c.contact_address = :sender ORDER BY m.id",
            sender=FLOODER,
        )
        assert len(flood) == 30
        limited = [row for row in flood if row.note == "rate limited"]
        assert [row.body for row in limited] == [f"flood {i}" for i in range(5, 30)]
        assert {row.reply_state for row in limited} == {"skipped"}
        assert {row.reply_state for row in flood[:5]} == {"answered"}
        # The flood's excess never reaches the LLM, not even as context.
        prompts = str(stack.openai.requests)
        assert all(row.body not in prompts for row in limited)
        logged = [e for e in log_records.events if e.get("event") == "webhook.rate_limited"]
        assert len(logged) == 25
        assert all("sender" not in event for event in logged)
        assert "+34" not in str(logged)
        outcomes = stack.database.rows(
            "SELECT outcome, count(*) AS n FROM webhook_logs WHERE endpoint = 'sms'"
            " GROUP BY outcome"
        )
        assert {row.outcome: row.n for row in outcomes} == {"accepted": 6, "rate_limited": 25}

    def test_an_account_over_its_limit_stores_the_rest_unanswered(self, flood_stack):
        stack = flood_stack
        senders = [f"+3461200{i:04d}" for i in range(15)]
        for sender in senders:
            stack.send(sender=sender, body="Hola")

        wait_for(stack.settled, "every message settled")
        rows = stack.database.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        assert [r.reply_state for r in rows] == ["answered"] * 12 + ["skipped"] * 3
        assert {r.note for r in rows[12:]} == {"rate limited"}
        reasons = stack.database.rows(
            "SELECT reason FROM webhook_logs WHERE outcome = 'rate_limited' ORDER BY id"
        )
        assert [r.reason for r in reasons] == ["over the per-account limit"] * 3
        assert len(stack.twilio.sent) == 12

    def test_the_sender_limit_holds_across_servers(self, flood_stack, live_server):
        stack = flood_stack
        other = live_server(stack.server.settings)
        for index in range(8):
            url = (stack.server if index % 2 else other).url
            data = inbound_form("sms", sender=FLOODER, body=f"flood {index}")
            assert post_signed(stack.client, url, "/webhook/sms", data).status_code == 200

        wait_for(stack.settled, "every message settled")
        rows = stack.database.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        assert [r.note for r in rows] == [None] * 5 + ["rate limited"] * 3
        # (Answered once each, some together: there is no debounce to wait for the others.)
        assert [r.reply_state for r in rows] == ["answered"] * 5 + ["skipped"] * 3


def new_api_key(database_url: str) -> str:
    """A new API key for the (default) account."""

    async def main() -> str:
        engine = db.create_engine(database_url)
        try:
            async with db.transaction(db.create_sessionmaker(engine)) as session:
                account = await session.scalar(select(Account).limit(1))
                assert account is not None
                return await create_api_key(session, account.id)
        finally:
            await engine.dispose()

    return asyncio.run(main())


class TestApiLimit:
    def test_over_the_limit_the_api_answers_429_with_retry_after(self, flood_stack, database_url):
        stack = flood_stack
        url = f"{stack.server.url}/api/sms/stats"
        headers = {"Authorization": f"Bearer {new_api_key(database_url)}"}

        statuses = [stack.client.get(url, headers=headers).status_code for _ in range(3)]
        refused = stack.client.get(url, headers=headers)

        assert statuses == [200] * 3
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        error = refused.json()["error"]
        assert set(error) == {"code", "message"}
        assert "too many requests" in error["message"]
        # Other credentials have allowances of their own.
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert stack.client.get(url, headers=admin).status_code == 200
        other = {"Authorization": f"Bearer {new_api_key(database_url)}"}
        assert stack.client.get(url, headers=other).status_code == 200
