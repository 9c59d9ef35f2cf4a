"""The reply task's SQL: Core statements built once, and transactions that say whether they must
survive a database crash.

The reply path runs a handful of statements per reply, many times a second, so it skips the
ORM's per-call statement building and identity map: every statement here is built at import
with `bindparam()` (SQLAlchemy then reuses its compiled form), and rows come back as small
dataclasses. Other code (the API, the dashboard) keeps using the ORM and
conversations/repository.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Insert,
    Row,
    Table,
    and_,
    bindparam,
    case,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from platica.conversations import service
from platica.db import constant
from platica.models import (
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    WebhookLog,
    utcnow,
)

_messages = cast(Table, Message.__table__)
_conversations_table = cast(Table, Conversation.__table__)
_contacts_table = cast(Table, Contact.__table__)
_configs_table = cast(Table, ChannelConfig.__table__)
_m = _messages.c
_configs = _configs_table.c
_contacts = _contacts_table.c
_conversations = _conversations_table.c
_logs = cast(Table, WebhookLog.__table__).c

UNSENT = (MessageStatus.pending, MessageStatus.sending)


def engine_of(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine the process's sessions are bound to."""
    engine = sessionmaker.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return engine


# Durability. On PostgreSQL a plain COMMIT waits for its WAL to reach the disk (an fsync, about
# 1.5 ms here); `synchronous_commit = off` skips the wait, and a database crash may then forget
# the last few such commits. That is harmless for a transaction whose work is redone from the
# durable state before it: a lease (it lapses), an LLM attempt counter, a batch read, keyword
# handling (the inbound message is still pending), a stored Twilio SID (the message stays
# `sending` and is reconciled with `sender.find_sent` before any retry). The WAL is written in
# order, so the next durable commit makes every earlier one durable too.
# The commit that must be durable is the one after which Twilio may be called: the message
# marked `sending` (and the reply stored with it). Lost, the message would be sent again without
# asking Twilio first. That transaction also renews the lease, failing if the worker lost it, so
# a forgotten lease cannot let two workers send. SQLite already runs synchronous=NORMAL (db.py).
_NOT_DURABLE = "SET LOCAL synchronous_commit = off"


@asynccontextmanager
async def transaction(engine: AsyncEngine, *, durable: bool) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction, committed when the block succeeds (durably only when
    `durable`, see above) and rolled back when it raises."""
    async with engine.begin() as connection:
        if not durable and connection.dialect.name == "postgresql":
            await connection.exec_driver_sql(_NOT_DURABLE)
        yield connection


# --- Rows ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ConversationState:
    id: int
    account_id: uuid.UUID
    channel: Channel
    contact_id: int
    status: str
    ai_enabled: bool
    handoff_until: datetime | None


@dataclass(slots=True)
class ContactState:
    id: int
    address: str
    opted_out: bool


@dataclass(slots=True)
class Loaded:
    conversation: ConversationState
    config: ChannelConfig  # transient (in no session): prompts and shaping read it
    contact: ContactState


@dataclass(slots=True)
class Inbound:
    """An inbound message waiting for its reply."""

    id: int
    body: str
    attempts: int
    created_at: datetime


@dataclass(slots=True)
class Outbound:
    """An outbound message to send (or being sent)."""

    id: int
    channel: Channel
    body: str
    status: MessageStatus
    attempts: int
    part: int
    created_at: datetime


def conversation_state(row: Row[Any]) -> ConversationState:
    return ConversationState(
        row.id,
        row.account_id,
        Channel(row.channel),
        row.contact_id,
        row.status,
        row.ai_enabled,
        row.handoff_until,
    )


# --- Reading -------------------------------------------------------------------------------

_CONFIG_COLUMNS = [c for c in _configs if c.key not in ("created_at", "updated_at")]
_CONTACT_COLUMNS = [
    _contacts.id.label("contact__id"),
    _contacts.address.label("contact__address"),
    _contacts.opted_out.label("contact__opted_out"),
]
_LOAD = (
    select(*_CONFIG_COLUMNS, *_CONTACT_COLUMNS)
    .select_from(_contacts_table)
    .join(
        _configs_table,
        and_(_configs.account_id == _contacts.account_id, _configs.channel == _contacts.channel),
    )
    .where(_contacts.id == bindparam("contact_id"))
)


async def load(connection: AsyncConnection, conversation: ConversationState) -> Loaded | None:
    """The channel config and contact of `conversation`, or None if either is gone."""
    row = (await connection.execute(_LOAD, {"contact_id": conversation.contact_id})).first()
    if row is None:
        return None
    values = row._asdict()
    contact = ContactState(
        values.pop("contact__id"), values.pop("contact__address"), values.pop("contact__opted_out")
    )
    return Loaded(conversation, ChannelConfig(**values), contact)


_WORK = (
    select(
        _m.id,
        _m.direction,
        _m.channel,
        _m.body,
        _m.status,
        _m.attempts,
        _m.part,
        _m.created_at,
    )
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        or_(
            _m.reply_state == ReplyState.pending,
            and_(_m.direction == Direction.outbound, _m.status.in_(UNSENT)),
        ),
    )
    .order_by(_m.id)
)


async def work(
    connection: AsyncConnection, conversation_id: int
) -> tuple[list[Outbound], list[Inbound]]:
    """The conversation's unsent outbound messages and unanswered inbound ones, oldest first."""
    unsent: list[Outbound] = []
    pending: list[Inbound] = []
    for row in await connection.execute(_WORK, {"conversation_id": conversation_id}):
        if row.direction == Direction.inbound:
            pending.append(Inbound(row.id, row.body, row.attempts, row.created_at))
        else:
            unsent.append(
                Outbound(
                    row.id,
                    Channel(row.channel),
                    row.body,
                    MessageStatus(row.status),
                    row.attempts,
                    row.part,
                    row.created_at,
                )
            )
    return unsent, pending


_HISTORY = (
    select(_m.direction, _m.body, _m.media)
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        _m.status.not_in([MessageStatus.failed, MessageStatus.undelivered]),
        or_(_m.reply_state.is_(None), _m.reply_state != ReplyState.skipped),
    )
    .order_by(_m.id.desc())
    .limit(bindparam("limit"))
)


async def history(connection: AsyncConnection, conversation_id: int, limit: int) -> list[Message]:
    """The conversation's last `limit` messages worth showing the model, oldest first (transient
    Message objects, as prompts.build_messages takes)."""
    rows = await connection.execute(_HISTORY, {"conversation_id": conversation_id, "limit": limit})
    found = [Message(direction=r.direction, body=r.body, media=r.media) for r in rows]
    found.reverse()
    return found


# --- Writing -------------------------------------------------------------------------------

_ids: BindParameter[list[int]] = bindparam("ids", expanding=True)

_COUNT_ATTEMPT = update(_messages).where(_m.id.in_(_ids)).values(attempts=bindparam("attempt"))


async def count_attempt(connection: AsyncConnection, ids: Sequence[int], attempt: int) -> None:
    """Record that the LLM is being asked for the `attempt`th time about these messages."""
    await connection.execute(_COUNT_ATTEMPT, {"ids": list(ids), "attempt": attempt})


_SETTLE = (
    update(_messages)
    .where(_m.id.in_(_ids), _m.reply_state == ReplyState.pending)
    .values(reply_state=bindparam("state"), note=bindparam("new_note"), updated_at=bindparam("now"))
)


async def settle(
    connection: AsyncConnection, ids: Sequence[int], state: ReplyState, note: str | None
) -> None:
    """Mark pending inbound messages answered or skipped, with `note`."""
    await connection.execute(
        _SETTLE, {"ids": list(ids), "state": state, "new_note": note, "now": utcnow()}
    )


_RESUME_AI = (
    update(_conversations_table)
    .where(_conversations.id == bindparam("conversation_id"))
    .values(ai_enabled=True, handoff_until=None)
)


async def resume_ai(connection: AsyncConnection, conversation_id: int) -> None:
    await connection.execute(_RESUME_AI, {"conversation_id": conversation_id})


_SET_OPTED_OUT = (
    update(_contacts_table)
    .where(_contacts.id == bindparam("contact_id"))
    .values(opted_out=bindparam("value"), opted_out_at=bindparam("at"))
)


async def set_opted_out(connection: AsyncConnection, contact_id: int, opted_out: bool) -> None:
    await connection.execute(
        _SET_OPTED_OUT,
        {"contact_id": contact_id, "value": opted_out, "at": utcnow() if opted_out else None},
    )


_PART_COLUMNS = (
    "account_id",
    "conversation_id",
    "channel",
    "direction",
    "author",
    "body",
    "media",
    "status",
    "reply_to_id",
    "part",
    "attempts",
    "encoding",
    "segments",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "created_at",
    "updated_at",
)


def _insert_part(module: Any) -> Insert:
    statement: Any = module.insert(_messages).values(
        {name: bindparam(name) for name in _PART_COLUMNS}
    )
    # The unique index (reply_to_id, part) among outbound messages: a second worker's reply to
    # the same message is not stored.
    return statement.on_conflict_do_nothing(  # type: ignore[no-any-return]
        index_elements=["reply_to_id", "part"],
        index_where=_m.direction == constant(Direction.outbound),
    ).returning(_m.id)


_INSERT_PART = {"postgresql": _insert_part(postgresql), "sqlite": _insert_part(sqlite)}
_PART_DEFAULTS: dict[str, Any] = {
    "direction": Direction.outbound,
    "media": [],
    "attempts": 0,
    "encoding": None,
    "segments": None,
    "model": None,
    "prompt_tokens": None,
    "completion_tokens": None,
    "latency_ms": None,
}


async def insert_reply_part(connection: AsyncConnection, values: dict[str, Any]) -> int | None:
    """Store one part of a reply unless that part of a reply to that message exists already;
    its id, or None."""
    now = utcnow()
    statement = _INSERT_PART[connection.dialect.name]
    params = {**_PART_DEFAULTS, "created_at": now, "updated_at": now, **values}
    result = await connection.execute(statement, params)
    found: int | None = result.scalar_one_or_none()
    return found


def touch_values() -> dict[str, Any]:
    """For locks.renew_statement: move last_message_at forward to the `at` parameter."""
    at = bindparam("at", type_=_conversations.last_message_at.type)
    latest = case((_conversations.last_message_at < at, at), else_=_conversations.last_message_at)
    return {"last_message_at": latest}


_MARK_SENDING = (
    update(_messages)
    .where(_m.id == bindparam("message_id"))
    .values(
        status=MessageStatus.sending,
        attempts=bindparam("new_attempts"),
        updated_at=bindparam("now"),
    )
)


async def mark_sending(connection: AsyncConnection, message: Outbound) -> None:
    """Record `message` as possibly on its way to Twilio, with its attempts counted."""
    await connection.execute(
        _MARK_SENDING,
        {"message_id": message.id, "new_attempts": message.attempts, "now": utcnow()},
    )


_sid: BindParameter[str | None] = bindparam("sid")
_STORE_SENT = (
    update(_messages)
    .where(_m.id == bindparam("message_id"))
    .values(
        twilio_sid=_sid,
        status=bindparam("new_status"),
        error_message=None,
        updated_at=bindparam("now"),
    )
    # Whether a status callback for this SID came before it was stored (and waits for it).
    .returning(exists().where(_logs.message_sid == _sid, _logs.outcome == "status_unknown"))
)


async def store_sent(
    connection: AsyncConnection, message_id: int, sid: str | None, status: MessageStatus
) -> None:
    """Store the SID and status Twilio gave the message."""
    early = await connection.execute(
        _STORE_SENT,
        {"message_id": message_id, "sid": sid, "new_status": status, "now": utcnow()},
    )
    if sid is not None and early.scalar():
        # A status callback raced ahead of this write: apply it now, through the service.
        session = AsyncSession(bind=connection)
        await service.replay_early_statuses(session, sid)
        await session.flush()
        await session.close()


_RECORD_ERROR = (
    update(_messages)
    .where(_m.id == bindparam("message_id"))
    .values(
        status=bindparam("new_status"),
        error_code=bindparam("code"),
        error_message=bindparam("error"),
        updated_at=bindparam("now"),
    )
)


async def record_error(
    connection: AsyncConnection,
    message_id: int,
    status: MessageStatus,
    error: str,
    code: int | None = None,
) -> None:
    """Record a failed send: for good (status failed) or for now (the status it is left in)."""
    await connection.execute(
        _RECORD_ERROR,
        {
            "message_id": message_id,
            "new_status": status,
            "code": code,
            "error": error,
            "now": utcnow(),
        },
    )


def idle() -> list[Any]:
    """For locks.release_statement: the conversation has nothing left to answer or send."""
    return [
        ~exists().where(
            _m.conversation_id == _conversations.id, _m.reply_state == ReplyState.pending
        ),
        ~exists().where(
            _m.conversation_id == _conversations.id,
            _m.direction == Direction.outbound,
            _m.status.in_(UNSENT),
        ),
    ]
