"""The statements every message runs, planned generically on empty tables (what a prepared
statement on a new database keeps): each table is reached through an index lookup, so what a
message costs does not grow with the messages stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from platica.channels import postgresql
from platica.jobs import queue
from platica.models import utcnow
from platica.replies import outbox, store
from tests.conftest import truncate_all
from tests.plans import generic_plan, unbounded_scans

pytestmark = pytest.mark.postgres

NOW = utcnow()
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
}

STATEMENTS: dict[str, Any] = {
    "webhook": postgresql.RECORD_STATEMENT,
    "status callback": postgresql.STATUS,
    "claim": queue.CLAIM_DUE.statement,
    "take lease": queue.TAKE.statement,
    "renew and touch": queue.RENEW_AND_TOUCH.statement,
    "release when idle": queue.RELEASE_WHEN_IDLE,
    "load": store._LOAD,
    "work": store._WORK,
    "history": store._HISTORY,
    "mark sending": outbox._MARK_SENDING,
    "store sent": outbox._STORE_SENT,
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_every_table_is_reached_by_an_index_lookup(name: str, postgres_url: str) -> None:
    truncate_all(postgres_url)
    statement = STATEMENTS[name]
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    plan = generic_plan(conninfo, statement, SAMPLE)

    assert unbounded_scans(plan) == [], plan


def test_the_next_due_time_is_the_first_entry_of_its_index(postgres_url: str) -> None:
    """An ordered walk of the due index that stops at the first conversation nobody holds: it
    only steps over due conversations being answered at that moment."""
    truncate_all(postgres_url)
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    plan = generic_plan(conninfo, queue.NEXT_DUE, SAMPLE).splitlines()

    assert plan[0].startswith("Limit"), plan
    assert "Index Scan using ix_conversations_reply_due on conversations" in plan[1], plan
