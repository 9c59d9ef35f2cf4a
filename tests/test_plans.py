"""The statements every message runs, planned generically on empty tables (what a prepared
statement on a new database keeps): each table is reached through an index lookup, so what a
message costs does not grow with the messages stored."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

import psycopg
import pytest
from sqlalchemy.sql import ClauseElement

from platica.channels import postgresql
from platica.jobs import queue
from platica.media import store as media
from platica.models import utcnow
from platica.outreach import broadcaster, handing
from platica.replies import outbox, store
from tests.conftest import truncate_all
from tests.plans import generic_plan, unbounded_scans

pytestmark = pytest.mark.postgres

NOW = utcnow()
ACCOUNT = uuid.uuid4()
SAMPLE: dict[str, Any] = {
    # The webhook's statement.
    "sid": "SM0123456789abcdef0123456789abcdef",
    "channel": "sms",
    "recipient": "+15005550006",
    "sender": "+34600111222",
    "profile_name": None,
    "wa_id": None,
    "body": "Hola",
    "simulated": False,
    "now": NOW,
    "window_over": NOW,
    "flood_limit": 100,
    "limited_note": "flood",
    "flag_reason": "flood",
    "flood_reason": "flood",
    "endpoint": "sms",
    "token": None,
    "signature_valid": True,
    "params": json.dumps({"Body": ["Hola"]}),
    # The status callback's (new_status below).
    "earlier": ["queued", "sending", "sent"],
    "code": None,
    "error": None,
    "clear": True,
    # The reply path's and the queue's.
    "conversation_id": 1,
    "contact_id": 1,
    "message_id": 1,
    "owner": "0123456789abcdef",
    "expires_at": NOW,
    "at": NOW,
    "due": NOW,
    "new_status": "sent",
    "new_attempts": 1,
    # The media's.
    "media": json.dumps(
        [
            {
                "position": 0,
                "kind": "audio",
                "content_type": "audio/ogg",
                "url": "https://api.twilio.com/x",
                "state": "pending",
                "text": None,
                "error": None,
                "latitude": None,
                "longitude": None,
            }
        ]
    ),
    "flood_media_error": "flood",
    "ids": [1, 2],
    # The broadcaster's and the hand-over's.
    "skip": [3],
    "broadcast_id": 1,
    "n": 5,
    "look": 60,
    "account_id": ACCOUNT,
    "address": "+34600111222",
}

STATEMENTS: dict[str, Any] = {
    "webhook": postgresql.RECORD_STATEMENT,
    "status callback": postgresql.STATUS,
    "claim": queue.CLAIM_DUE.statement,
    "take lease": queue.TAKE.statement,
    "renew and touch": queue.RENEW_AND_TOUCH.statement,
    "release when idle": queue.RELEASE_WHEN_IDLE,
    "load": store._LOAD,
    "work": store._WORK.statement,
    "history": store._HISTORY.statement,
    "webhook with media": postgresql.RECORD_WITH_MEDIA_STATEMENT,
    "unread media": media.PENDING.statement,
    "mark sending": outbox._MARK_SENDING,
    "store sent": outbox._STORE_SENT,
    "broadcast's next recipients": broadcaster._QUEUED_RECIPIENTS.statement,
    "broadcast's unsent messages": broadcaster._IN_FLIGHT,
    "hand-over's contact": handing._UPSERT_CONTACT["postgresql"].statement,
    "hand-over's conversation": handing._FIND_ACTIVE,
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_every_table_is_reached_by_an_index_lookup(name: str, postgres_url: str) -> None:
    truncate_all(postgres_url)
    statement = STATEMENTS[name]
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    plan = generic_plan(conninfo, statement, SAMPLE)

    assert unbounded_scans(plan) == [], plan


def test_a_due_broadcast_is_found_among_the_sending_ones_only(postgres_url: str) -> None:
    """The broadcaster's claim walks the partial index of broadcasts still sending (a handful,
    however many were sent before), never the table."""
    truncate_all(postgres_url)
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    plan = generic_plan(conninfo, cast(ClauseElement, broadcaster._CLAIM.statement), SAMPLE)

    scans = [line for line in plan.splitlines() if "on broadcasts" in line]
    assert scans, plan
    assert all("using ix_broadcasts_sending" in line for line in scans), plan
    assert "Seq Scan" not in plan, plan


def test_the_next_due_time_is_the_first_entry_of_its_index(postgres_url: str) -> None:
    """An ordered walk of the due index that stops at the first conversation nobody holds: it
    only steps over due conversations being answered at that moment."""
    truncate_all(postgres_url)
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    plan = generic_plan(conninfo, queue.NEXT_DUE, SAMPLE).splitlines()

    assert plan[0].startswith("Limit"), plan
    assert "Index Scan using ix_conversations_reply_due on conversations" in plan[1], plan


@pytest.mark.parametrize("statement", [media.ATTACHMENTS.statement, media.PICTURES.statement])
def test_a_messages_media_are_found_through_its_index(statement: Any, postgres_url: str) -> None:
    """On an empty table any plan is cheap; with media stored (2,000 messages' worth, analyzed)
    a message's items are looked up by its index, not found by reading them all."""
    truncate_all(postgres_url)
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO accounts (id, name, created_at) VALUES (%s, 'Panadería Sol', now())",
            (ACCOUNT,),
        )
        connection.execute(
            "INSERT INTO contacts (account_id, channel, address, opted_out, created_at)"
            " VALUES (%s, 'whatsapp', '+34600111222', false, now())",
            (ACCOUNT,),
        )
        connection.execute(
            "INSERT INTO conversations (account_id, channel, contact_id, contact_address, status,"
            " ai_enabled, created_at, last_message_at)"
            " SELECT %s, 'whatsapp', id, address, 'active', true, now(), now() FROM contacts",
            (ACCOUNT,),
        )
        connection.execute(
            "INSERT INTO messages (account_id, conversation_id, channel, direction, author, body,"
            " status, part, attempts, created_at, updated_at)"
            " SELECT %s, c.id, 'whatsapp', 'inbound', 'contact', '', 'received', 0, 0, now(),"
            " now() FROM conversations c, generate_series(1, 2000)",
            (ACCOUNT,),
        )
        connection.execute(
            "INSERT INTO media (account_id, message_id, position, kind, content_type, state,"
            " attempts, text, created_at, updated_at)"
            " SELECT account_id, id, 0, 'audio', 'audio/ogg', 'understood', 1,"
            " 'Hola, ¿abren mañana?', now(), now() FROM messages"
        )
        connection.execute("ANALYZE media")

    plan = generic_plan(conninfo, statement, SAMPLE)

    assert unbounded_scans(plan) == [], plan
