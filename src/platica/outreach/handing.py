"""Handing a message Plática starts to the reply worker: the contact found or created, its
active conversation found or opened, the message stored `pending` in it. The worker then sends
it like any reply (replies/sending.py): once, in order, checked again for opt-out and WhatsApp's
window just before Twilio is called, and found again at Twilio after a crash.

Core statements built once, run in the caller's transaction (a proactive message's request, a
broadcast's batch); rows are locked in the order everything else locks them: contact,
conversation, messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, case, insert, select, update

from platica.db import Tx, Typed, constant, dialect_insert, fetch_one
from platica.jobs import queue
from platica.models import (
    Author,
    Channel,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
)
from platica.outreach.window import window_open
from platica.sms import sms_encoding

_contacts_table = cast(Table, Contact.__table__)
_conversations_table = cast(Table, Conversation.__table__)
_messages_table = cast(Table, Message.__table__)
_contacts = _contacts_table.c
_conversations = _conversations_table.c

_now = bindparam("now", type_=_contacts.created_at.type)
_ACTIVE = constant(ConversationStatus.active)


class ContactRow(NamedTuple):
    id: int
    opted_out: bool
    last_inbound_at: datetime | None


def _upsert_contact(dialect: str) -> Typed[ContactRow]:
    """The contact, created if new; an existing one is locked (a no-op update) and returned
    as it is: its opt-out and last message are the webhook's to change, not ours."""
    statement = dialect_insert(dialect, _contacts_table).values(
        account_id=bindparam("account_id"),
        channel=bindparam("channel"),
        address=bindparam("address"),
        opted_out=False,
        created_at=_now,
        rate_window_count=0,
    )
    return Typed(
        statement.on_conflict_do_update(
            index_elements=["account_id", "channel", "address"],
            set_={"address": statement.excluded.address},
        ).returning(_contacts.id, _contacts.opted_out, _contacts.last_inbound_at),
        ContactRow,
    )


_UPSERT_CONTACT = {name: _upsert_contact(name) for name in ("postgresql", "sqlite")}
_FIND_ACTIVE = select(_conversations.id).where(
    _conversations.contact_id == bindparam("contact_id"), _conversations.status == _ACTIVE
)


def _open(dialect: str) -> Any:
    return (
        dialect_insert(dialect, _conversations_table)
        .values(
            account_id=bindparam("account_id"),
            channel=bindparam("channel"),
            contact_id=bindparam("contact_id"),
            contact_address=bindparam("address"),
            status=ConversationStatus.active,
            ai_enabled=True,
            crash_count=0,
            created_at=_now,
            last_message_at=_now,
        )
        .on_conflict_do_nothing(
            index_elements=["contact_id"], index_where=_conversations.status == _ACTIVE
        )
        .returning(_conversations.id)
    )


_OPEN = {name: _open(name) for name in ("postgresql", "sqlite")}
_TOUCH = (
    update(_conversations_table)
    .where(_conversations.id == bindparam("conversation_id"))
    .values(
        last_message_at=case(
            (_conversations.last_message_at < _now, _now), else_=_conversations.last_message_at
        )
    )
)
_INSERT_MESSAGE = (
    insert(_messages_table)
    .values(
        account_id=bindparam("account_id"),
        conversation_id=bindparam("conversation_id"),
        channel=bindparam("channel"),
        direction=Direction.outbound,
        author=bindparam("author"),
        body=bindparam("body"),
        status=MessageStatus.pending,
        part=0,
        attempts=0,
        encoding=bindparam("encoding"),
        segments=bindparam("segments"),
        simulated=False,
        content_sid=bindparam("content_sid"),
        content_variables=bindparam("content_variables"),
        created_at=_now,
        updated_at=_now,
    )
    .returning(_messages_table.c.id)
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What to send: free text, or a template's ContentSid and variables with its text."""

    body: str
    content_sid: str | None = None
    content_variables: dict[str, str] | None = None
    author: Author = Author.operator


@dataclass(frozen=True, slots=True)
class Handed:
    message_id: int
    conversation_id: int


class Refused(NamedTuple):
    """Why nothing was stored: `reason` in words; `opted_out` or outside the window."""

    reason: str
    opted_out: bool


OPTED_OUT = "the contact has opted out (STOP); nothing can be sent to them until they write START"
OUTSIDE_WINDOW = (
    "more than 24 hours have passed since the contact last wrote (WhatsApp's customer-service "
    "window): only an approved template can be sent; use 'template' and 'variables'"
)
NEVER_WROTE = (
    "the contact has never written to this WhatsApp number, so WhatsApp's customer-service "
    "window is closed: only an approved template can be sent; use 'template' and 'variables'"
)


async def hand_over(
    tx: Tx,
    account_id: uuid.UUID,
    channel: Channel,
    address: str,
    outgoing: Outgoing,
    now: datetime,
) -> Handed | Refused:
    """Store `outgoing` for `address` (E.164) in its active conversation, opened if need be,
    and make the conversation due on PostgreSQL (the caller wakes the runner once committed;
    on SQLite it defers the conversation). Refused, with nothing stored, for an opted-out
    contact, or free text outside WhatsApp's window."""
    params: dict[str, Any] = {
        "account_id": account_id,
        "channel": channel.value,
        "address": address,
        "now": now,
    }
    contact = await fetch_one(tx, _UPSERT_CONTACT[tx.dialect_name], params)
    assert contact is not None  # an upsert returns its row
    if contact.opted_out:
        return Refused(OPTED_OUT, opted_out=True)
    if outgoing.content_sid is None and not window_open(channel, contact.last_inbound_at, now):
        reason = OUTSIDE_WINDOW if contact.last_inbound_at is not None else NEVER_WROTE
        return Refused(reason, opted_out=False)
    params["contact_id"] = contact.id
    conversation_id = (await tx.execute(_FIND_ACTIVE, params)).scalar()
    if conversation_id is None:
        conversation_id = (await tx.execute(_OPEN[tx.dialect_name], params)).scalar()
        if conversation_id is None:
            # Opened meanwhile by the contact's own message (it commits first, as we waited
            # on the contact's row): it is there now.
            conversation_id = (await tx.execute(_FIND_ACTIVE, params)).scalar()
    assert conversation_id is not None
    params["conversation_id"] = conversation_id
    await tx.execute(_TOUCH, params)
    encoding, segments = sms_encoding(outgoing.body) if channel == Channel.sms else (None, None)
    message_id = (
        await tx.execute(
            _INSERT_MESSAGE,
            {
                **params,
                "author": outgoing.author.value,
                "body": outgoing.body,
                "encoding": encoding,
                "segments": segments,
                "content_sid": outgoing.content_sid,
                "content_variables": outgoing.content_variables,
            },
        )
    ).scalar()
    if tx.dialect_name == "postgresql":
        await tx.execute(queue.MAKE_DUE, {"ids": [conversation_id], "due": now})
    return Handed(message_id, conversation_id)
