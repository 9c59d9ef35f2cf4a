"""Delivery statuses: a status report, read from Twilio's callback form; the one rule that moves
a message's status (models.status_move) as one Core statement, `ADVANCE`; and the reports that
came before their message's SID was stored, applied once it is.

The form is read here, below the webhook, because it is read twice: by the status webhook
(channels/), and by the reply path (replies/outbox.py) when it stores the SID that reports logged
earlier (`status_unknown`) were waiting for. The log keeps the form as Twilio sent it.

Users of ADVANCE: the status webhook on SQLite (channels/inbound.py) and the replay here run it
as it is; the status webhook on PostgreSQL runs it inside its one statement, with the log entry
(channels/postgresql.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Boolean, Table, bindparam, case, func, select, update

from platica.db import Tx, any_of, one_of
from platica.errors import BadRequest
from platica.http import FormData, first
from platica.models import FINAL_STATUSES, Message, MessageStatus, WebhookLog, status_move, utcnow

SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")

_messages = cast(Table, Message.__table__)
_m = _messages.c
_logs_table = cast(Table, WebhookLog.__table__)
_logs = _logs_table.c


# --- The report ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    sid: str
    status: MessageStatus
    error_code: int | None = None
    error_message: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def required(form: FormData, name: str) -> str:
    """A field that must be there and not blank (at most 64 characters but the Body)."""
    value = (first(form, name) or "").strip()
    if not value:
        raise BadRequest(f"missing required field {name}")
    if len(value) > 64 and name != "Body":
        raise BadRequest(f"field {name} is too long")
    return value


def required_sid(form: FormData, name: str = "MessageSid") -> str:
    """A Twilio SID field: two letters and 32 hexadecimal characters."""
    sid = required(form, name)
    if not SID.match(sid):
        raise BadRequest(f"{name} must be two letters and 32 hexadecimal characters")
    return sid


def parse_status(form: FormData) -> StatusUpdate:
    """Validate and extract a delivery status callback."""
    sid = required_sid(form)
    raw_status = (first(form, "MessageStatus") or first(form, "SmsStatus") or "").strip().lower()
    if not raw_status:
        raise BadRequest("missing required field MessageStatus")
    try:
        status = MessageStatus(raw_status)
    except ValueError:
        raise BadRequest(f"unknown MessageStatus {raw_status[:30]!r}") from None
    raw_code = (first(form, "ErrorCode") or "").strip()
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses.
    is_number = raw_code.isascii() and raw_code.isdigit() and len(raw_code) < 9
    error_code = int(raw_code) if is_number else None
    extra = {}
    if raw_code and error_code is None:
        # Some errors come as words (e.g. the sandbox's InvalidSandboxRequest).
        extra["ErrorCode"] = raw_code[:100]
    error_message = first(form, "ErrorMessage") or extra.get("ErrorCode")
    return StatusUpdate(
        sid=sid, status=status, error_code=error_code, error_message=error_message, extra=extra
    )


# --- The rule ------------------------------------------------------------------------------------


class StatusOutcome(StrEnum):
    updated = "updated"
    stale = "stale"  # an older status arrived after a newer one; ignored
    unknown = "unknown"  # no message has this SID
    ignored = "ignored"  # the message's status is final (failed): nothing changes it


_sid = bindparam("sid", type_=_m.twilio_sid.type)
_clear = bindparam("clear", type_=Boolean())
# models.status_move as SQL: the message with the SID moves to `new_status` only from one of the
# statuses it replaces (`earlier`: never backwards, never out of a final status); a report that
# reached the handset (`clear`) clears the stored error, any other keeps it unless it brings its
# own. Run with `advance_params`.
ADVANCE = (
    update(_messages)
    .where(_m.twilio_sid == _sid, any_of(_m.status, "earlier"))
    .values(
        status=bindparam("new_status", type_=_m.status.type),
        updated_at=bindparam("now", type_=_m.updated_at.type),
        error_code=case(
            (_clear, None),
            else_=func.coalesce(bindparam("code", type_=_m.error_code.type), _m.error_code),
        ),
        error_message=case(
            (_clear, None),
            else_=func.coalesce(bindparam("error", type_=_m.error_message.type), _m.error_message),
        ),
    )
)
# Why a report moved nothing, when some message has its SID.
NOT_MOVED = (
    select(
        case(
            (one_of(_m.status, sorted(FINAL_STATUSES)), StatusOutcome.ignored.value),
            else_=StatusOutcome.stale.value,
        )
    )
    .where(_m.twilio_sid == _sid)
    .scalar_subquery()
)


def advance_params(update: StatusUpdate, now: datetime | None = None) -> dict[str, Any]:
    """ADVANCE's parameters for the report `update`."""
    move = status_move(update.status)
    return {
        "sid": update.sid,
        "earlier": [status.value for status in move.replaces],
        "new_status": update.status.value,
        "clear": move.clears_error,
        "code": update.error_code,
        "error": update.error_message,
        "now": now or utcnow(),
    }


_NOT_MOVED = select(func.coalesce(NOT_MOVED, StatusOutcome.unknown.value))


async def apply_status(tx: Tx, update: StatusUpdate) -> StatusOutcome:
    """Apply a delivery status report (ADVANCE); what it did."""
    if (await tx.execute(ADVANCE, advance_params(update))).rowcount:
        return StatusOutcome.updated
    return StatusOutcome((await tx.execute(_NOT_MOVED, {"sid": update.sid})).scalar())


# --- Reports that came first ---------------------------------------------------------------------

EARLY = "status_unknown"
_EARLY_STATUSES = (
    select(_logs.id, _logs.params)
    .where(_logs.message_sid == bindparam("sid"), _logs.outcome == EARLY)
    .order_by(_logs.id)
)
_REPLAYED = update(_logs_table).where(any_of(_logs.id, "log_ids")).values(outcome="status_replayed")


async def replay_early_statuses(tx: Tx, sid: str) -> None:
    """Status callbacks logged before a message had the SID `sid` (`status_unknown`), applied
    now in their order, as the webhook would have; their log entries say so."""
    entries = list(await tx.execute(_EARLY_STATUSES, {"sid": sid}))
    for entry in entries:
        if entry.params:
            await apply_status(tx, parse_status(entry.params))
    if entries:
        await tx.execute(_REPLAYED, {"log_ids": [entry.id for entry in entries]})
