"""Recording an inbound message (channels/inbound.py): SQLite's Core statements and PostgreSQL's
one statement keep the same rules, checked here on both through `record_message`, as the
webhook and the dashboard's simulator call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from platica.app import start_services, stop_services
from platica.channels.inbound import FLOOD_REASON, WebhookEntry, record_message
from platica.channels.parsing import InboundMessage, parse_inbound
from platica.deps import AppState
from platica.models import Channel, Contact, utcnow
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE
from tests.conftest import Database, make_settings
from tests.factories import CONTACT, inbound_form

FLOOD_LIMIT = 3


@pytest.fixture
async def state(database_url: str) -> AsyncIterator[AppState]:
    """One process's state, with no worker: what is recorded stays as recorded."""
    settings = make_settings(database_url, RATE_LIMIT_FLOOD=f"{FLOOD_LIMIT}/minute")
    state = await start_services(settings, work=False)
    try:
        yield state
    finally:
        await stop_services(state)


def message(channel: str = "sms", **form: str) -> InboundMessage:
    fields = {name: [value] for name, value in inbound_form(channel, **form).items()}
    return parse_inbound(fields, Channel(channel))


async def record(state: AppState, inbound: InboundMessage) -> tuple[int | None, str]:
    """The new message's id (None for a repeated delivery) and the log entry's outcome."""
    entry = WebhookEntry(endpoint=inbound.channel.value, message_sid=inbound.sid, params={})
    recorded = await record_message(state, inbound, entry)
    assert recorded is not None
    return recorded.message_id, entry.outcome


class TestRecordMessage:
    async def test_a_message_is_stored_with_its_contact_conversation_and_log(self, state, database):
        message_id, outcome = await record(state, message(body="¿Abren hoy?"))

        assert outcome == "accepted"
        row = database.rows(
            "SELECT m.id, m.body, m.direction, m.author, m.status, m.reply_state,"
            " c.status AS conversation, c.contact_address, k.address, k.rate_window_count"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " JOIN contacts k ON k.id = c.contact_id"
        )
        stored = (message_id, "¿Abren hoy?", "inbound", "contact", "received", "pending")
        assert [tuple(r) for r in row] == [(*stored, "active", CONTACT, CONTACT, 1)]
        logs = database.rows("SELECT outcome, account_id, status_code FROM webhook_logs")
        assert [(r.outcome, r.status_code) for r in logs] == [("accepted", 200)]
        assert logs[0].account_id is not None

    async def test_a_repeated_message_sid_is_stored_once(self, state, database):
        inbound = message()
        first = await record(state, inbound)
        again = await record(state, replace(inbound, body="changed"))

        assert first[1] == "accepted"
        assert again == (None, "duplicate")
        assert [r.body for r in database.rows("SELECT body FROM messages")] == ["Hola"]
        # The repeat changed nothing else either: its sender's window counted one message.
        assert database.scalar("SELECT rate_window_count FROM contacts") == 1
        reasons = database.rows("SELECT outcome, reason FROM webhook_logs ORDER BY id")
        assert [(r.outcome, r.reason) for r in reasons] == [
            ("accepted", None),
            ("duplicate", "MessageSid already recorded"),
        ]

    async def test_messages_over_the_flood_limit_are_stored_unanswered_and_flag_the_contact(
        self, state, database
    ):
        outcomes = [(await record(state, message(body=f"m{i}")))[1] for i in range(5)]

        assert outcomes == ["accepted"] * FLOOD_LIMIT + ["flood"] * 2
        states = database.rows("SELECT reply_state, note FROM messages ORDER BY id")
        assert [(r.reply_state, r.note) for r in states] == [("pending", None)] * FLOOD_LIMIT + [
            ("skipped", FLOOD_NOTE)
        ] * 2
        contact = database.rows("SELECT rate_window_count, flagged_at, flag_reason FROM contacts")[
            0
        ]
        assert contact.rate_window_count == 5
        assert contact.flagged_at is not None
        assert contact.flag_reason == FLOOD_FLAG
        reasons = database.rows("SELECT reason FROM webhook_logs WHERE outcome = 'flood'")
        assert [r.reason for r in reasons] == [FLOOD_REASON] * 2

    async def test_a_new_window_counts_afresh(self, state, database):
        for i in range(FLOOD_LIMIT + 1):
            await record(state, message(body=f"m{i}"))
        # The window began over a minute ago.
        with database.engine.begin() as connection:
            connection.execute(
                sa.update(Contact).values(rate_window_start=utcnow() - timedelta(minutes=2))
            )

        assert (await record(state, message(body="later")))[1] == "accepted"
        assert database.scalar("SELECT rate_window_count FROM contacts") == 1
        # The flag stays for the operators.
        assert database.scalar("SELECT flag_reason FROM contacts") == FLOOD_FLAG

    async def test_a_new_contacts_first_messages_at_once_open_one_conversation(
        self, state, database
    ):
        results = await asyncio.gather(*(record(state, message(body=f"m{i}")) for i in range(2)))

        assert sorted(outcome for _, outcome in results) == ["accepted", "accepted"]
        assert database.count("contacts") == 1
        assert database.count("conversations") == 1
        assert database.count("messages") == 2

    async def test_a_closed_conversation_stays_closed_and_a_new_one_opens(
        self, state, database: Database
    ):
        await record(state, message(body="first"))
        database.execute("UPDATE conversations SET status = 'closed'")

        await record(state, message(body="second"))

        rows = database.rows(
            "SELECT c.status, m.body FROM messages m"
            " JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id"
        )
        assert [tuple(r) for r in rows] == [("closed", "first"), ("active", "second")]
        assert database.count("contacts") == 1

    async def test_a_later_message_without_a_profile_keeps_the_stored_one(self, state, database):
        await record(state, message("whatsapp", body="hola"))
        await record(state, replace(message("whatsapp"), profile_name=None, wa_id=None))

        row = database.rows("SELECT profile_name, wa_id FROM contacts")[0]
        assert (row.profile_name, row.wa_id) == ("Ana", CONTACT.lstrip("+"))

    async def test_a_number_no_account_owns_records_nothing(self, state, database):
        inbound = replace(message("whatsapp"), recipient="+15550000000")
        entry = WebhookEntry(endpoint="whatsapp")

        assert await record_message(state, inbound, entry) is None
        assert database.count("messages") == 0
        assert database.count("contacts") == 0
        assert database.count("webhook_logs") == 0
