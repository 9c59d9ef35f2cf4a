"""The operators' commands: `platica stats`, `platica cleanup`, `platica accounts keys` and
`platica accounts retention`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import (
    Channel,
    Conversation,
    Direction,
    ReplyState,
    WebhookLog,
    utcnow,
)
from tests.conftest import Database, make_settings
from tests.records import add_account, add_conversation, add_message, in_session
from tests.test_cli import invoke, printed


async def add_question(
    session: AsyncSession,
    account_id: uuid.UUID,
    channel: Channel,
    address: str,
    *,
    age: timedelta = timedelta(hours=1),
    replied_after: timedelta | None = None,
) -> Conversation:
    """A conversation with one inbound message `age` ago, answered `replied_after` later."""
    sent_at = utcnow() - age
    conversation = await add_conversation(
        session, account_id, address, channel, created_at=sent_at, last_message_at=sent_at
    )
    question = await add_message(
        session,
        conversation,
        body="¿Abren hoy?",
        reply_state=ReplyState.answered if replied_after else ReplyState.pending,
        created_at=sent_at,
    )
    if replied_after is not None:
        await add_message(
            session,
            conversation,
            Direction.outbound,
            body="Sí, hasta las 8.",
            reply_to_id=question.id,
            created_at=sent_at + replied_after,
        )
    return conversation


@pytest.fixture
def accounts(use_database: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Two accounts: A with an answered SMS and a waiting WhatsApp message, B with one SMS."""

    async def seed(session: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
        a, b = await add_account(session, "A"), await add_account(session, "B")
        await add_question(
            session, a.id, Channel.sms, "+34600000001", replied_after=timedelta(seconds=2)
        )
        await add_question(session, a.id, Channel.whatsapp, "+34600000002")
        await add_question(session, b.id, Channel.sms, "+34600000003")
        return a.id, b.id

    return in_session(use_database, seed)


class TestStats:
    def test_table_of_both_channels_for_all_accounts(self, accounts):
        result = invoke("stats")

        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0] == "Plática stats, all accounts"
        assert lines[1].split() == ["whatsapp", "sms"]
        rows = {line[:24].strip(): line[24:].split() for line in lines[2:]}
        assert rows == {
            "Conversations": ["1", "2"],
            "active": ["1", "2"],
            "Messages": ["1", "3"],
            "incoming": ["1", "2"],
            "outgoing": ["0", "1"],
            "Average response (ms)": ["-", "2000.0"],
            "Active users, 24 h": ["1", "2"],
            "Active users, 7 days": ["1", "2"],
        }

    def test_json_for_one_account(self, accounts):
        _, b = accounts

        result = invoke("stats", "--account-id", str(b), "--json")

        assert result.exit_code == 0, result.output
        figures = json.loads(result.stdout)
        assert figures["sms"] == {
            "channel": "sms",
            "total_conversations": 1,
            "active_conversations": 1,
            "total_messages": 1,
            "incoming_messages": 1,
            "outgoing_messages": 0,
            "avg_response_time_ms": None,
            "active_users_24h": 1,
            "active_users_7d": 1,
        }
        assert figures["whatsapp"]["total_conversations"] == 0
        assert list(figures) == ["whatsapp", "sms"]

    def test_json_for_all_accounts(self, accounts):
        result = invoke("stats", "--json")

        assert result.exit_code == 0, result.output
        figures = json.loads(result.stdout)
        assert figures["sms"]["avg_response_time_ms"] == 2000.0
        assert figures["sms"]["total_messages"] == 3

    def test_unknown_account(self, accounts):
        result = invoke("stats", "--account-id", str(uuid.uuid4()))

        assert result.exit_code == 1
        assert "no account" in result.stderr

    def test_empty_database(self, use_database):
        result = invoke("stats", "--json")

        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["whatsapp"]["total_messages"] == 0


class TestCleanup:
    def test_reports_what_it_did(self, use_database, database: Database):
        async def seed(session: AsyncSession) -> None:
            keeps_week = await add_account(session, "A", retention_days=7)
            await add_question(
                session,
                keeps_week.id,
                Channel.sms,
                "+34600000001",
                age=timedelta(days=40),
                replied_after=timedelta(seconds=3),
            )
            await add_question(session, keeps_week.id, Channel.sms, "+34600000002")
            session.add(
                WebhookLog(
                    received_at=utcnow() - timedelta(days=31),
                    endpoint="sms",
                    status_code=200,
                    outcome="accepted",
                )
            )

        in_session(use_database, seed)

        result = invoke("cleanup", "--days", "30")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [
            "Closed 1 conversation with no message for 30 days.",
            "Deleted 2 messages older than their account's retention "
            "(accounts without one keep theirs).",
            "Deleted 1 webhook log entry older than 30 days "
            "(or their account's retention, if shorter).",
        ]
        assert database.count("messages") == 1
        assert database.scalar("SELECT count(*) FROM conversations WHERE status = 'closed'") == 1

    def test_nothing_to_do(self, use_database):
        result = invoke("cleanup")

        assert result.exit_code == 0, result.output
        assert "Closed 0 conversations with no message for 30 days." in result.stdout

    def test_one_day_is_one_day(self, use_database):
        """Item 9 of issue 12: not "1 days"."""
        result = invoke("cleanup", "--days", "1")

        assert result.exit_code == 0, result.output
        assert "Closed 0 conversations with no message for 1 day." in result.stdout

    def test_days_must_be_positive(self, use_database):
        result = invoke("cleanup", "--days", "0")

        assert result.exit_code == 2


class TestRetention:
    def test_set_show_and_keep(self, accounts, database: Database):
        a, _ = accounts

        assert invoke("accounts", "retention", str(a), "90").stdout == (
            f"Account {a}: messages are kept 90 days.\n"
        )
        assert invoke("accounts", "retention", str(a)).stdout == (
            f"Account {a}: messages are kept 90 days.\n"
        )
        assert database.scalar("SELECT retention_days FROM accounts WHERE name = 'A'") == 90
        assert invoke("accounts", "retention", str(a), "keep").stdout == (
            f"Account {a}: every message is kept.\n"
        )
        assert database.scalar("SELECT retention_days FROM accounts WHERE name = 'A'") is None
        assert invoke("accounts", "retention", str(a), "1").stdout == (
            f"Account {a}: messages are kept 1 day.\n"
        )

    @pytest.mark.parametrize("days", ["0", "-3", "soon"])
    def test_bad_days(self, accounts, days):
        a, _ = accounts

        result = invoke("accounts", "retention", str(a), days)

        assert result.exit_code == 2

    def test_unknown_account(self, use_database):
        result = invoke("accounts", "retention", str(uuid.uuid4()), "30")

        assert result.exit_code == 1
        assert "no account" in result.stderr


@pytest.fixture
def api(use_database: str, live_server: Any) -> Iterator[Callable[[str], int]]:
    """GET /api/sms/stats on a live server with a bearer token; the status code."""
    server = live_server(make_settings(use_database))
    with httpx.Client(timeout=10) as client:

        def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return client.get(f"{server.url}/api/sms/stats", headers=headers).status_code

        yield status


class TestKeys:
    def test_create_then_revoke(self, api, database: Database):
        created = invoke("accounts", "create", "Shop")
        account_id = printed(created, "Account 'Shop' created")

        result = invoke("accounts", "keys", "create", account_id, "--name", "ci")

        assert result.exit_code == 0, result.output
        key = printed(result, "API key (shown once")
        assert key.startswith("plk_")
        assert result.stdout.splitlines()[0] == (
            f"API key {key[:12]} ('ci') created for account {account_id}."
        )
        assert database.scalar("SELECT name FROM api_keys WHERE prefix = :p", p=key[:12]) == "ci"
        assert api(key) == 200

        revoked = invoke("accounts", "keys", "revoke", key[:12])

        assert revoked.exit_code == 0, revoked.output
        assert revoked.stdout == f"API key {key[:12]} ('ci') of account {account_id} revoked.\n"
        assert api(key) == 401
        # The account's first key still works.
        first = printed(created, "API key (shown once")
        assert api(first) == 200
        again = invoke("accounts", "keys", "revoke", key[:12])
        assert again.exit_code == 0
        assert again.stdout == f"API key {key[:12]} was already revoked.\n"

    def test_revoke_by_the_whole_key(self, api):
        created = invoke("accounts", "create", "Shop")
        key = printed(created, "API key (shown once")

        assert invoke("accounts", "keys", "revoke", key).exit_code == 0
        assert api(key) == 401

    def test_list_shows_prefixes_never_keys(self, use_database):
        created = invoke("accounts", "create", "Shop")
        account_id = printed(created, "Account 'Shop' created")
        key = printed(created, "API key (shown once")
        invoke("accounts", "keys", "revoke", key[:12])

        result = invoke("accounts", "keys", "list", account_id)

        assert result.exit_code == 0, result.output
        header, row = result.stdout.splitlines()
        assert header.split() == ["PREFIX", "NAME", "CREATED", "LAST", "USED", "REVOKED"]
        assert row.startswith(key[:12])
        assert key not in result.stdout
        assert row.split()[-2:] != ["-", "-"]  # revoked: a date and time

    def test_unknown_prefix(self, use_database):
        result = invoke("accounts", "keys", "revoke", "plk_00000000")

        assert result.exit_code == 1
        assert "no API key starts with 'plk_00000000'" in result.stderr

    def test_unknown_account(self, use_database):
        result = invoke("accounts", "keys", "create", str(uuid.uuid4()))

        assert result.exit_code == 1
        assert "no account" in result.stderr

    def test_bad_account_id(self, use_database):
        result = invoke("accounts", "keys", "create", "not-a-uuid")

        assert result.exit_code == 1
        assert result.stderr == "Error: no account with id or name 'not-a-uuid'\n"
