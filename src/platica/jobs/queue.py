"""The reply queue: every statement on `conversations.reply_due_at` and the lease columns
(`lease_owner`, `lease_expires_at`). Nothing else writes them (the webhook's PostgreSQL statement
takes its due-time expression from here: `due_sql`).

The invariant. A conversation with *work* (an inbound message waiting for its reply, or an
outbound message not yet handed to Twilio) is, at every moment, one of:

- **due**: `reply_due_at` is set (on SQLite, the in-process runner holds a timer instead); a
  worker claims it once that time has passed;
- **leased**: a worker holds a live lease (`lease_expires_at` in the future); it gives the lease
  back only when the conversation has no work left (`RELEASE_WHEN_IDLE`), or makes it due again;
- **swept**: neither, because a process died or a wake-up was lost; once its work is older than
  the sweeper's grace, `needing_work` finds it and `RESCUE` makes it due.

Parked conversations (their task crashed again and again, jobs/locks.py) are left out on
purpose until an operator retries them; messages an operator's handoff holds wait for it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    null,
    or_,
    select,
    update,
)

from platica.db import Tx, Typed, any_of, one_of
from platica.models import (
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)

_table = cast(Table, Conversation.__table__)
_c = _table.c
_m = cast(Table, Message.__table__).c

# How many crashes in a row park a conversation (jobs/locks.py).
PARK_AFTER_CRASHES = 5
# What working processes LISTEN on (PostgreSQL), and `NOTIFY_SQL` wakes.
WAKE_CHANNEL = "platica_replies"
NOTIFY_SQL = f"SELECT pg_notify('{WAKE_CHANNEL}', '')"

# --- Work: what keeps a conversation from being idle ----------------------------------------

UNSENT = (MessageStatus.pending, MessageStatus.sending)
# An inbound message waiting for its reply.
PENDING_INBOUND: ColumnElement[bool] = _m.reply_state == ReplyState.pending
# An outbound message stored but not yet handed to Twilio (or not known to have been).
UNSENT_OUTBOUND: ColumnElement[bool] = and_(
    _m.direction == Direction.outbound, one_of(_m.status, UNSENT)
)
# A message that is work.
IS_WORK: ColumnElement[bool] = or_(PENDING_INBOUND, UNSENT_OUTBOUND)
# The conversation (of the statement's row) has no work left.
IDLE: list[ColumnElement[bool]] = [
    ~exists().where(_m.conversation_id == _c.id, PENDING_INBOUND),
    ~exists().where(_m.conversation_id == _c.id, UNSENT_OUTBOUND),
]

# --- Leases -----------------------------------------------------------------------------------


class Leased(NamedTuple):
    """The conversation, as taking, claiming or renewing its lease returns it."""

    id: int
    account_id: uuid.UUID
    channel: str
    contact_id: int
    status: str
    ai_enabled: bool
    handoff_until: datetime | None
    busy_sent_at: datetime | None
    crash_count: int
    parked_at: datetime | None


class Claimed(NamedTuple):
    """The conversation a claim took (see CLAIM_DUE), and whether another one is due too."""

    id: int
    account_id: uuid.UUID
    channel: str
    contact_id: int
    status: str
    ai_enabled: bool
    handoff_until: datetime | None
    busy_sent_at: datetime | None
    crash_count: int
    parked_at: datetime | None
    more_due: bool


# A claim's row is the lease's, and one more column (jobs/locks.py reads it as both).
assert Claimed._fields[:-1] == Leased._fields


class Crashed(NamedTuple):
    crash_count: int
    parked_at: datetime | None


_LEASED = [_c[name] for name in Leased._fields]

_now = bindparam("now", type_=_c.reply_due_at.type)
_LEASE_FREE = or_(_c.lease_expires_at.is_(None), _c.lease_expires_at < _now)


def renew_statement(**values: Any) -> Typed[Leased]:
    """An UPDATE that extends a held lease (and sets `values`), returning the conversation.

    Build it once, at import: executed by `Lease.renew` with the parameters conversation_id,
    owner and expires_at (plus any bindparam of `values`).
    """
    statement = (
        update(_table)
        .where(_c.id == bindparam("conversation_id"), _c.lease_owner == bindparam("owner"))
        .values(lease_expires_at=bindparam("expires_at"), **values)
        .returning(*_LEASED)
    )
    return Typed(statement, Leased)


def release_statement(*conditions: ColumnElement[bool]) -> Update:
    """An UPDATE that gives a held lease back, when every one of `conditions` holds.

    Build it once, at import: executed by `Lease.release` with the parameters conversation_id
    and owner.
    """
    return (
        update(_table)
        .where(
            _c.id == bindparam("conversation_id"), _c.lease_owner == bindparam("owner"), *conditions
        )
        .values(lease_owner=None, lease_expires_at=None)
    )


# Takes the lease of a conversation nobody holds (and that is not parked).
TAKE = Typed(
    update(_table)
    .where(_c.id == bindparam("conversation_id"), _LEASE_FREE, _c.parked_at.is_(None))
    .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("expires_at"))
    .returning(*_LEASED),
    Leased,
)
PARKED = select(_c.parked_at.is_not(None)).where(_c.id == bindparam("conversation_id"))
RENEW = renew_statement()
RELEASE = release_statement()
# Gives the lease back only if nothing arrived to answer or send while the worker held it.
RELEASE_WHEN_IDLE = release_statement(*IDLE)
# Renews the lease (failing if it was lost) and moves last_message_at forward to `at`.
_at = bindparam("at", type_=_c.last_message_at.type)
RENEW_AND_TOUCH = renew_statement(
    last_message_at=case((_c.last_message_at < _at, _at), else_=_c.last_message_at)
)
# Gives the lease back with the crash counted; the one that makes PARK_AFTER_CRASHES parks the
# conversation and takes it off PostgreSQL's queue.
_crashes = _c.crash_count + 1
_parks = _crashes >= PARK_AFTER_CRASHES
CRASHED = Typed(
    release_statement()
    .values(
        crash_count=_crashes,
        parked_at=case((_parks, _now), else_=_c.parked_at),
        parked_error=case(
            (_parks, bindparam("error", type_=_c.parked_error.type)), else_=_c.parked_error
        ),
        reply_due_at=case((_parks, null()), else_=_c.reply_due_at),
    )
    .returning(_c.crash_count, _c.parked_at),
    Crashed,
)
# A run that did not crash: the count starts again.
RECOVERED = (
    update(_table)
    .where(_c.id == bindparam("conversation_id"), _c.crash_count > 0, _c.parked_at.is_(None))
    .values(crash_count=0)
)

# --- Due times (PostgreSQL's queue) -----------------------------------------------------------

# The due conversation nobody holds that has waited longest (the partial index on reply_due_at),
# locked so that concurrent claims by other processes skip it rather than wait; claiming it
# takes its lease and clears its due time in the same UPDATE, so there is no moment when it is
# claimed but unleased. One conversation per statement, by `id = (subquery)`: a primary-key
# lookup however it is planned (a claim of several joined to the table was planned, while the
# table was small, as a scan of all of it; tests/test_plans.py).
_due = _c.reply_due_at
_CLAIMABLE = (
    select(_c.id)
    .where(_due <= _now, _LEASE_FREE)
    .order_by(_due)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_other = _table.alias("other")
CLAIM_DUE = Typed(
    update(_table)
    .where(_c.id == _CLAIMABLE)
    .values(
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires_at"),
        reply_due_at=null(),
    )
    .returning(
        *_LEASED,
        # Whether another conversation is due too: the runner then starts a second task at
        # once, and otherwise waits. Ordered and limited like the claim, so that it is a probe
        # of the due index however it is planned.
        select(_other.c.id)
        .where(
            _other.c.reply_due_at <= _now,
            or_(_other.c.lease_expires_at.is_(None), _other.c.lease_expires_at < _now),
            _other.c.id != _c.id,
        )
        .order_by(_other.c.reply_due_at)
        .limit(1)
        .scalar_subquery()
        .is_not(None)
        .label("more_due"),
    ),
    Claimed,
)
# The next moment a conversation nobody holds becomes due.
NEXT_DUE = (
    select(_c.reply_due_at)
    .where(_c.reply_due_at.is_not(None), _LEASE_FREE)
    .order_by(_c.reply_due_at)
    .limit(1)
)
# Due at `due`, unless it is due sooner already.
_due_at = bindparam("due", type_=_c.reply_due_at.type)
MAKE_DUE = (
    update(_table)
    .where(any_of(_c.id, "ids"))
    .values(reply_due_at=func.least(func.coalesce(_c.reply_due_at, _due_at), _due_at))
)


def due_sql(due: str) -> str:
    """MAKE_DUE's expression in SQL, for the webhook's PostgreSQL statement: due at `due` (an
    SQL expression), unless due sooner already."""
    return f"LEAST(COALESCE(reply_due_at, {due}), {due})"


# --- The sweeper --------------------------------------------------------------------------------

# Due now, unless queued already (due at some time: waiting out a backoff, which a sweep must not
# cut short), held by a worker, or parked.
RESCUE = (
    update(_table)
    .where(any_of(_c.id, "ids"), _c.reply_due_at.is_(None), _LEASE_FREE, _c.parked_at.is_(None))
    .values(reply_due_at=_now)
)


def needing_work(limit: int = 500) -> Select[Any]:
    """Conversations with work last touched before the parameter `older_than` (at `now`): what
    a crash or a lost wake-up may have left behind. Not those a worker holds (their lease is
    live), that are due already, that are parked, or whose messages an operator's handoff keeps
    waiting for them (until it runs out: the AI then answers)."""
    older_than = bindparam("older_than", type_=_m.created_at.type)
    pending = (
        select(_m.conversation_id)
        .join(_table, _c.id == _m.conversation_id)
        .where(
            PENDING_INBOUND,
            _m.created_at < older_than,
            or_(
                _c.ai_enabled.is_(True),
                _c.handoff_until <= _now,
                _c.status != ConversationStatus.active,
            ),
        )
    )
    unsent = select(_m.conversation_id).where(UNSENT_OUTBOUND, _m.updated_at < older_than)
    return (
        select(_c.id)
        .where(
            _c.id.in_(pending.union(unsent).scalar_subquery()),
            _c.reply_due_at.is_(None),
            _LEASE_FREE,
            _c.parked_at.is_(None),
        )
        .limit(limit)
    )


NEEDING_WORK = needing_work()


async def conversations_needing_work(tx: Tx, older_than: datetime) -> list[int]:
    """The ids NEEDING_WORK finds now (see needing_work)."""
    rows = await tx.execute(NEEDING_WORK, {"older_than": older_than, "now": utcnow()})
    return [row.id for row in rows]
