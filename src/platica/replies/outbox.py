"""A reply's messages on their way to Twilio: each part stored once, marked sending before the
call, then its SID and status or its error; Core statements built once, like store.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import psycopg.errors
from sqlalchemy import BindParameter, Insert, Table, Update, bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from platica.conversations.statuses import EARLY, replay_early_statuses
from platica.db import Tx, any_of, constant
from platica.models import Direction, Message, MessageStatus, WebhookLog, utcnow
from platica.replies.store import Outbound

_messages = cast(Table, Message.__table__)
_m = _messages.c
_logs = cast(Table, WebhookLog.__table__).c

_PART_COLUMNS = (
    "account_id",
    "conversation_id",
    "channel",
    "direction",
    "author",
    "body",
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
    "simulated",
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
    "attempts": 0,
    "encoding": None,
    "segments": None,
    "model": None,
    "prompt_tokens": None,
    "completion_tokens": None,
    "latency_ms": None,
    "simulated": False,
}


async def insert_reply_part(connection: Tx, values: dict[str, Any]) -> int | None:
    """Store one part of a reply unless that part of a reply to that message exists already;
    its id, or None."""
    now = utcnow()
    statement = _INSERT_PART[connection.dialect_name]
    params = {**_PART_DEFAULTS, "created_at": now, "updated_at": now, **values}
    result = await connection.execute(statement, params)
    found: int | None = result.scalar_one_or_none()
    return found


_MARK_SENDING = (
    update(_messages)
    .where(_m.id == bindparam("message_id"))
    .values(
        status=MessageStatus.sending,
        attempts=bindparam("new_attempts"),
        updated_at=bindparam("now"),
    )
)


async def mark_sending(connection: Tx, message: Outbound) -> None:
    """Record `message` as possibly on its way to Twilio, with its attempts counted, from now
    (its `sending_since`)."""
    now = utcnow()
    await connection.execute(
        _MARK_SENDING, {"message_id": message.id, "new_attempts": message.attempts, "now": now}
    )
    message.sending_since = now


class SidTaken(Exception):
    """Another message has this Twilio SID already."""


_UNIQUE_SID = "uq_messages_twilio_sid"


def _is_sid_clash(error: Exception) -> bool:
    """Whether `error` is the unique index on messages.twilio_sid refusing a SID."""
    cause = getattr(error, "orig", error)
    if isinstance(cause, psycopg.errors.UniqueViolation):
        return cause.diag.constraint_name == _UNIQUE_SID
    return isinstance(error, IntegrityError) and "messages.twilio_sid" in str(error)


_STORED_SIDS = select(_m.twilio_sid).where(any_of(_m.twilio_sid, "sids"))


async def stored_sids(connection: Tx, sids: Sequence[str]) -> set[str]:
    """Those of these Twilio SIDs some message has."""
    rows = await connection.execute(_STORED_SIDS, {"sids": list(sids)})
    return {row.twilio_sid for row in rows}


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
    .returning(exists().where(_logs.message_sid == _sid, _logs.outcome == EARLY))
)


async def store_sent(
    connection: Tx, message_id: int, sid: str | None, status: MessageStatus
) -> None:
    """Store the SID and status Twilio gave the message; SidTaken when another message has the
    SID (the caller's transaction is then spoiled: let it roll back)."""
    try:
        early = await connection.execute(
            _STORE_SENT,
            {"message_id": message_id, "sid": sid, "new_status": status, "now": utcnow()},
        )
    except (IntegrityError, psycopg.errors.UniqueViolation) as error:
        if _is_sid_clash(error):
            raise SidTaken(sid) from error
        raise
    if sid is not None and early.scalar():
        await replay_early_statuses(connection, sid)


def _record_error(*, touch: bool) -> Update:
    return (
        update(_messages)
        .where(_m.id == bindparam("message_id"))
        .values(
            status=bindparam("new_status"),
            error_code=bindparam("code"),
            error_message=bindparam("error"),
            attempts=func.coalesce(bindparam("new_attempts", type_=_m.attempts.type), _m.attempts),
            updated_at=bindparam("now") if touch else _m.updated_at,
        )
    )


# A message left `sending` keeps its updated_at: the moment its current attempt began, from
# which Twilio is asked whether it landed (Outbound.sending_since).
_RECORD_ERROR = {True: _record_error(touch=True), False: _record_error(touch=False)}


async def record_error(
    connection: Tx,
    message_id: int,
    status: MessageStatus,
    error: str,
    code: int | None = None,
    attempts: int | None = None,
) -> None:
    """Record a failed send (or lookup): for good (status failed) or for now (the status it is
    left in), with the attempts counted so far when given."""
    await connection.execute(
        _RECORD_ERROR[status != MessageStatus.sending],
        {
            "message_id": message_id,
            "new_status": status,
            "code": code,
            "error": error,
            "new_attempts": attempts,
            "now": utcnow(),
        },
    )
