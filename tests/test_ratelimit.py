"""Abuse limits: the limiter itself, a flood over real HTTP that leaves other senders answered,
and the API's 429 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from platica import db
from platica.accounts import create_api_key
from platica.config import ConfigError, load_settings
from platica.models import Account
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE, Pace, RateLimits
from tests.factories import CONTACT, inbound_form, post_signed
from tests.polling import wait_for
from tests.replies.test_pipeline import ADMIN_TOKEN, Stack, make_stack

FLOODER = "+34611000999"


LOW_LIMITS = {
    "RATE_LIMIT_FLOOD": "5/minute",
    "RATE_LIMIT_API": "3/minute",
}


def low_limits(**overrides: str) -> RateLimits:
    return RateLimits(load_settings(_env_file=None, **{**LOW_LIMITS, **overrides}))


START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class TestRateLimits:
    def test_the_flood_window_counts_on_then_starts_again(self):
        window = low_limits().flood

        assert (window.limit, window.seconds) == (5, 60)
        assert window.next_count(None, 0, START) == (START, 1)
        later = START + timedelta(seconds=59)
        assert window.next_count(START, 5, later) == (START, 6)
        expired = START + timedelta(seconds=60)
        assert window.next_count(START, 6, expired) == (expired, 1)

    def test_the_defaults_pace_and_only_a_flood_is_left_unanswered(self):
        limits = RateLimits(load_settings(_env_file=None))

        assert limits.per_sender is not None
        assert (limits.per_sender.limit, limits.per_sender.seconds) == (20, 60)
        # Off: the provider's own 429s pace the LLM, a daily budget bounds what it costs.
        assert limits.per_account is None
        assert (limits.flood.limit, limits.flood.seconds) == (120, 60)

    def test_a_pace_lets_a_burst_through_then_one_each_interval(self):
        pace = Pace(limit=3, seconds=60)
        paced_at = None
        for _ in range(3):
            paced_at, wait = pace.take(paced_at, START)
            assert wait == 0

        assert paced_at == START + timedelta(seconds=60)
        refused, wait = pace.take(paced_at, START)
        assert refused is None
        assert wait == pytest.approx(20)
        # An interval later there is room for one more, not two.
        later = START + timedelta(seconds=20)
        paced_at, wait = pace.take(paced_at, later)
        assert wait == 0
        refused, wait = pace.take(paced_at, later)
        assert refused is None
        assert wait == pytest.approx(20)

    def test_an_idle_pace_starts_afresh(self):
        pace = Pace(limit=2, seconds=10)
        long_ago = START - timedelta(hours=1)

        assert pace.take(long_ago, START) == (START + timedelta(seconds=5), 0.0)

    def test_a_sender_window_waits_for_its_oldest_reply_to_leave_it(self):
        pace = Pace(limit=2, seconds=60)

        assert pace.wait_after(None, START) == 0
        assert pace.wait_after(START, START + timedelta(seconds=45)) == pytest.approx(15)
        assert pace.wait_after(START, START + timedelta(seconds=61)) == 0

    def test_api_calls_per_credential(self):
        limits = low_limits()

        assert [limits.api("key-a") for _ in range(3)] == [None] * 3
        retry_after = limits.api("key-a")

        assert retry_after is not None
        assert 1 <= retry_after <= 60
        assert limits.api("key-b") is None

    def test_each_server_counts_api_calls_for_itself(self):
        first, second = low_limits(), low_limits()
        for _ in range(3):
            first.api("key")

        assert first.api("key") is not None
        assert second.api("key") is None

    def test_off_means_no_limit(self):
        limits = low_limits(
            RATE_LIMIT_PER_SENDER="off",
            RATE_LIMIT_PER_ACCOUNT="off",
            RATE_LIMIT_FLOOD="off",
            RATE_LIMIT_API="off",
        )

        assert limits.per_sender is None
        assert limits.per_account is None
        assert all(limits.api("key") is None for _ in range(100))
        assert limits.flood.limit > 10**9
        assert limits.api_limit == "unlimited"

    @pytest.mark.parametrize("value", ["20 a minute", "0/minute", "-1/second", "lots"])
    @pytest.mark.parametrize(
        "variable",
        ["RATE_LIMIT_PER_SENDER", "RATE_LIMIT_PER_ACCOUNT", "RATE_LIMIT_FLOOD", "RATE_LIMIT_API"],
    )
    def test_a_malformed_limit_stops_start_up_naming_the_variable(self, variable, value):
        with pytest.raises(ConfigError, match=f"{variable}: must look like"):
            load_settings(_env_file=None, **{variable: value})


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
    yield from make_stack(database_url, live_server, LOG_LEVEL="INFO", **LOW_LIMITS)


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
        limited = [row for row in flood if row.note == FLOOD_NOTE]
        assert [row.body for row in limited] == [f"flood {i}" for i in range(5, 30)]
        assert {row.reply_state for row in limited} == {"skipped"}
        assert {row.reply_state for row in flood[:5]} == {"answered"}
        # The flood's excess never reaches the LLM, not even as context.
        prompts = str(stack.openai.requests)
        assert all(row.body not in prompts for row in limited)
        logged = [e for e in log_records.events if e.get("event") == "webhook.flood"]
        assert len(logged) == 25
        assert all("sender" not in event for event in logged)
        assert "+34" not in str(logged)
        outcomes = stack.database.rows(
            "SELECT outcome, count(*) AS n FROM webhook_logs WHERE endpoint = 'sms'"
            " GROUP BY outcome"
        )
        assert {row.outcome: row.n for row in outcomes} == {"accepted": 6, "flood": 25}

    def test_a_flooding_sender_is_flagged_for_the_operators(self, flood_stack):
        stack = flood_stack
        for index in range(6):
            stack.send(sender=FLOODER, body=f"flood {index}")
        stack.send(sender=CONTACT, body="Hola")

        wait_for(stack.settled, "every message settled")
        flags = {
            row.address: (row.flagged_at is not None, row.flag_reason)
            for row in stack.database.rows("SELECT address, flagged_at, flag_reason FROM contacts")
        }
        assert flags == {FLOODER: (True, FLOOD_FLAG), CONTACT: (False, None)}

    def test_the_flood_limit_holds_across_servers(self, flood_stack, live_server):
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
        assert [r.note for r in rows] == [None] * 5 + [FLOOD_NOTE] * 3
        # (Answered once each, some together: there is no debounce to wait for the others.)
        assert [r.reply_state for r in rows] == ["answered"] * 5 + ["skipped"] * 3


def answered_at(stack: Stack) -> list[datetime]:
    """When each AI reply was stored, in order."""
    rows = stack.database.rows(
        "SELECT created_at FROM messages WHERE direction = 'outbound' AND author = 'ai'"
        " ORDER BY created_at"
    )
    return [
        r.created_at if isinstance(r.created_at, datetime) else datetime.fromisoformat(r.created_at)
        for r in rows
    ]


@pytest.fixture
def default_limits(database_url, live_server) -> Iterator[Stack]:
    yield from make_stack(database_url, live_server)


@pytest.fixture
def account_paced(database_url, live_server) -> Iterator[Stack]:
    yield from make_stack(database_url, live_server, RATE_LIMIT_PER_ACCOUNT="10/second")


@pytest.fixture
def sender_paced(database_url, live_server) -> Iterator[Stack]:
    yield from make_stack(database_url, live_server, RATE_LIMIT_PER_SENDER="2/3seconds")


SENDERS = [f"+3461200{i:04d}" for i in range(30)]


class TestPacing:
    def test_a_busy_account_gets_every_message_answered(self, flood_stack):
        """Issue 12's defect 1: messages over the per-account limit were stored and never
        answered. With the default settings nothing but a flood is left unanswered."""
        stack = flood_stack
        for sender in SENDERS:
            stack.send(sender=sender, body="Hola")

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 30, "30 replies", 60)
        states = stack.database.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound'"
        )
        assert [(r.reply_state, r.note) for r in states] == [("answered", None)] * 30
        assert sorted(m["to"] for m in stack.twilio.sent) == sorted(SENDERS)

    def test_an_account_over_its_pace_is_answered_later_not_dropped(self, account_paced):
        stack = account_paced
        for sender in SENDERS:
            stack.send(sender=sender, body="Hola")

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 30, "30 replies", 60)
        states = stack.database.rows("SELECT reply_state FROM messages WHERE direction = 'inbound'")
        assert {r.reply_state for r in states} == {"answered"}
        # 10 at once, then one every 0.1 s: the last 20 spread over at least 2 s (a lower
        # bound: however slow the machine, pacing never lets them through sooner).
        stored = answered_at(stack)
        assert (stored[-1] - stored[0]).total_seconds() >= 1.9

    def test_the_account_pace_holds_across_servers(self, account_paced, live_server):
        stack = account_paced
        other = live_server(stack.server.settings)
        for index, sender in enumerate(SENDERS):
            url = (stack.server if index % 2 else other).url
            data = inbound_form("sms", sender=sender, body="Hola")
            assert post_signed(stack.client, url, "/webhook/sms", data).status_code == 200

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 30, "30 replies", 60)
        stored = answered_at(stack)
        # Counted per process, each server would have let 10 through at once and the other
        # 5 within half a second.
        assert (stored[-1] - stored[0]).total_seconds() >= 1.9

    def test_a_chatty_contact_is_answered_later_all_together(self, sender_paced):
        stack = sender_paced
        for text in ("uno", "dos"):
            stack.send(body=text)
            wait_for(lambda: stack.settled() and stack.outbound(), "a reply")
            wait_for(stack.settled, "settled")
        wait_for(lambda: len(stack.twilio.sent) == 2, "two replies")
        stack.send(body="tres")
        stack.send(body="cuatro")

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 3, "the paced reply")
        assert [m["body"] for m in stack.twilio.sent] == ["Echo: uno", "Echo: dos", "Echo: cuatro"]
        last = stack.openai.requests[-1]["messages"]
        assert [m["content"] for m in last[-2:]] == ["tres", "cuatro"]
        assert stack.inbound_states() == ["answered"] * 4

    def test_llm_calls_are_not_capped_at_a_small_constant(self, default_limits):
        """With a slow LLM, a worker keeps as many calls waiting as there are conversations to
        answer (WORKER_CONCURRENCY once capped them at 50)."""
        stack = default_limits
        stack.openai.latency = 1.5
        senders = [f"+3461300{i:04d}" for i in range(120)]
        for sender in senders:
            stack.send(sender=sender, body="Hola")

        wait_for(lambda: len(stack.twilio.sent) == 120, "120 replies", 60)
        assert stack.openai.max_in_flight > 50


def new_api_key(database_url: str) -> str:
    """A new API key for the (default) account."""

    async def main() -> str:
        engine = db.create_engine(database_url)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
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
