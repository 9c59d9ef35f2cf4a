"""Abuse limits: the limiter itself, a flood over real HTTP that leaves other senders answered,
and the API's 429 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from platica import db, ratelimit
from platica.accounts import create_api_key
from platica.models import Account
from platica.ratelimit import RateLimits
from tests.conftest import Database, make_settings
from tests.factories import CONTACT
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.polling import wait_for
from tests.replies.test_pipeline import Stack

FLOODER = "+34611000999"
ADMIN_TOKEN = "admin-0f3e5d7c9b"


@pytest.fixture
def low_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small limits, read when each server (its RateLimits) is built: request it first."""
    monkeypatch.setattr(ratelimit, "INBOUND_PER_SENDER", "5/minute")
    monkeypatch.setattr(ratelimit, "INBOUND_PER_ACCOUNT", "12/minute")
    monkeypatch.setattr(ratelimit, "API_PER_CREDENTIAL", "3/minute")


class TestRateLimits:
    def test_a_sender_over_its_limit(self, low_limits):
        limits = RateLimits()
        account = uuid.uuid4()

        results = [limits.inbound(account, "sms", FLOODER) for _ in range(7)]

        assert results == [None] * 5 + ["sender"] * 2
        assert limits.inbound(account, "sms", CONTACT) is None
        assert limits.inbound(account, "whatsapp", FLOODER) is None
        assert limits.inbound(uuid.uuid4(), "sms", FLOODER) is None

    def test_an_account_over_its_limit(self, low_limits):
        limits = RateLimits()
        account = uuid.uuid4()

        results = [limits.inbound(account, "sms", f"+3461100{i:04d}") for i in range(13)]

        assert results == [None] * 12 + ["account"]
        assert limits.inbound(uuid.uuid4(), "sms", CONTACT) is None

    def test_a_senders_excess_does_not_use_the_accounts_allowance(self, low_limits):
        limits = RateLimits()
        account = uuid.uuid4()
        for _ in range(50):
            limits.inbound(account, "sms", FLOODER)

        others = [limits.inbound(account, "sms", f"+3461100{i:04d}") for i in range(7)]

        # 5 of the flood counted; 7 more fit in the account's 12.
        assert others == [None] * 7

    def test_api_calls_per_credential(self, low_limits):
        limits = RateLimits()

        assert [limits.api("key-a") for _ in range(3)] == [None] * 3
        retry_after = limits.api("key-a")

        assert retry_after is not None
        assert 1 <= retry_after <= 60
        assert limits.api("key-b") is None

    def test_each_server_counts_for_itself(self, low_limits):
        first, second = RateLimits(), RateLimits()
        for _ in range(3):
            first.api("key")

        assert first.api("key") is not None
        assert second.api("key") is None


class Records(logging.Handler):
    """Keeps the structlog event dicts that reach the standard library's root logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append(record.msg)


@pytest.fixture
def flood_stack(low_limits, database_url, live_server) -> Iterator[Stack]:
    with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
        settings = make_settings(
            database_url,
            OPENAI_BASE_URL=openai.url,
            OPENAI_API_KEY="sk-local-0123456789",
            TWILIO_API_BASE_URL=twilio.url,
            PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
            LOG_LEVEL="INFO",
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
