"""The broadcaster: hands each broadcast's recipients over to the reply worker at the channel's
`broadcast_mps`, in every working process.

Each batch is one transaction that locks the broadcast's row (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so several workers share broadcasts and never work on one at once), reads its pace
clock, and hands over as many queued recipients as the pace allows: per recipient, the message
stored in its conversation (handing.py) and the recipient marked `handed` with it, or `skipped`
with why. A crash loses at most an uncommitted batch, whose recipients are still queued; what
was committed is the reply worker's to send, exactly once (replies/sending.py).

The pace clock (`broadcasts.paced_at`) is when the next recipient is due. Time nobody used
(a restart, a slow tick) banks at most `BURST_SECONDS` worth of messages, so no catch-up burst
goes over the pace. The broadcasts of one account and channel go one after the other, oldest
first: together they never exceed the channel's pace.

The pace is kept where recipients are handed over, and what Twilio sees follows it as long as
the reply worker keeps up. So that a backlog (Twilio slow for a while, a restart) cannot drain
in a burst, nothing more is handed over while more than `IN_FLIGHT_SECONDS` worth of the
broadcast's messages wait to be sent: Twilio then never sees more than the pace over a few
seconds, give or take that much.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, exists, func, select, update

from platica.db import Database, Tx, Typed, any_of, constant, fetch_all, fetch_one, one_of
from platica.jobs.queue import UNSENT
from platica.jobs.runner import TaskRunner
from platica.logging import get_logger
from platica.metrics import BROADCAST_PACE, OUTREACH
from platica.models import (
    Author,
    Broadcast,
    BroadcastRecipient,
    BroadcastStatus,
    Channel,
    ChannelConfig,
    Message,
    RecipientState,
    utcnow,
)
from platica.outreach.broadcasts import personal_body
from platica.outreach.handing import Handed, Outgoing, hand_over

log = get_logger(__name__)

# The shortest pause between two batches of one broadcast (fewer, larger transactions), and
# the most idle time may bank: both far below a second, so that over any few seconds the
# messages handed over stay within a few percent of the pace.
MIN_TICK_SECONDS = 0.1
BURST_SECONDS = 0.2
# How often to look for new broadcasts when none is running (one created in this process
# wakes the broadcaster at once).
IDLE_SECONDS = 1.0
# The most of a broadcast's messages (in seconds at the pace) that may wait to be sent before
# more are handed over; at least MIN_IN_FLIGHT.
IN_FLIGHT_SECONDS = 0.3
MIN_IN_FLIGHT = 2
# Bounds on one batch's transaction.
MAX_BATCH = 200
MAX_LOOKS = 4

_broadcasts = cast(Table, Broadcast.__table__)
_b = _broadcasts.c
_configs = cast(Table, ChannelConfig.__table__).c
_recipients_table = cast(Table, BroadcastRecipient.__table__)
_r = _recipients_table.c
_older = _broadcasts.alias("older")
_now = bindparam("now", type_=_b.paced_at.type)
_SENDING = constant(BroadcastStatus.sending)
_QUEUED = constant(RecipientState.queued)

# A broadcast whose turn it is: still sending, and no older one of its account and channel is.
_FRONT = and_(
    _b.status == _SENDING,
    ~exists().where(
        _older.c.account_id == _b.account_id,
        _older.c.channel == _b.channel,
        _older.c.status == _SENDING,
        _older.c.id < _b.id,
    ),
)


class _Due(NamedTuple):
    id: int
    account_id: Any
    channel: str
    content_sid: str | None
    body: str
    paced_at: datetime | None
    created_at: datetime
    broadcast_mps: float


_CLAIM = Typed(
    select(
        _b.id,
        _b.account_id,
        _b.channel,
        _b.content_sid,
        _b.body,
        _b.paced_at,
        _b.created_at,
        _configs.broadcast_mps,
    )
    .join(
        ChannelConfig.__table__,
        and_(_configs.account_id == _b.account_id, _configs.channel == _b.channel),
    )
    .where(_FRONT, (_b.paced_at.is_(None)) | (_b.paced_at <= _now), ~any_of(_b.id, "skip"))
    .order_by(_b.id)
    .limit(1)
    .with_for_update(of=_broadcasts, skip_locked=True),
    _Due,
)
_NEXT_DUE = select(func.min(func.coalesce(_b.paced_at, _now))).where(_FRONT)
_messages_table = cast(Table, Message.__table__)
_m = _messages_table.c
# Of the broadcast's latest recipients handed over, those whose message is not yet with Twilio:
# found walking its index newest first (nothing indexes the messages' status, which changes
# with every send and delivery report). A message still unsent after IN_FLIGHT_LOOK newer ones
# were handed over is left out: one stuck for long (its conversation parked, Twilio refusing
# it for a while) must not hold the broadcast up for good.
_latest = (
    select(_r.message_id)
    .where(
        _r.broadcast_id == bindparam("broadcast_id"), _r.state == constant(RecipientState.handed)
    )
    .order_by(_r.id.desc())
    .limit(bindparam("look"))
    .subquery()
)
_IN_FLIGHT = (
    select(func.count())
    .select_from(_latest)
    # A subquery per row, never joined: each a primary-key lookup however it is planned.
    .where(one_of(select(_m.status).where(_m.id == _latest.c.message_id).scalar_subquery(), UNSENT))
)
# How many of the latest handed over to look at, in multiples of the cap.
IN_FLIGHT_LOOK = 4


class _Queued(NamedTuple):
    id: int
    address: str
    variables: dict[str, str] | None


_QUEUED_RECIPIENTS = Typed(
    select(_r.id, _r.address, _r.variables)
    .where(_r.broadcast_id == bindparam("broadcast_id"), _r.state == _QUEUED)
    .order_by(_r.id)
    .limit(bindparam("n")),
    _Queued,
)
_HANDED = (
    update(_recipients_table)
    .where(_r.id == bindparam("recipient_id"))
    .values(
        state=RecipientState.handed,
        message_id=bindparam("message_id"),
        handed_at=bindparam("at", type_=_r.handed_at.type),
    )
)
_SKIPPED = (
    update(_recipients_table)
    .where(_r.id == bindparam("recipient_id"))
    .values(state=RecipientState.skipped, reason=bindparam("reason"))
)
_PACED = (
    update(_broadcasts)
    .where(_b.id == bindparam("broadcast_id"))
    .values(paced_at=bindparam("paced", type_=_b.paced_at.type))
)
_DONE = (
    update(_broadcasts)
    .where(_b.id == bindparam("broadcast_id"), _b.status == _SENDING)
    .values(status=BroadcastStatus.done, finished_at=_now)
)


@dataclass
class Batch:
    """What one batch did."""

    broadcast_id: int
    channel: str
    mps: float
    handed: list[Handed] = field(default_factory=list)
    skipped: int = 0
    done: bool = False
    started: bool = False
    elapsed: float = 0.0


def in_flight_cap(mps: float) -> int:
    """How many of the channel's messages may wait to be sent before more are handed over."""
    return max(MIN_IN_FLIGHT, math.ceil(mps * IN_FLIGHT_SECONDS))


def allowance(paced_at: datetime | None, now: datetime, mps: float) -> tuple[datetime, int]:
    """Where the pace clock starts from now, and how many recipients may go at once."""
    floor = now - timedelta(seconds=BURST_SECONDS)
    start = now if paced_at is None else max(paced_at, floor)
    if start > now:
        return start, 0
    return start, min(MAX_BATCH, math.floor((now - start).total_seconds() * mps) + 1)


async def hand_over_batch(tx: Tx, now: datetime, skip: Collection[int] = ()) -> Batch | None:
    """Lock the broadcast whose turn has come (not one of `skip`) and hand over what its pace
    allows; None when no broadcast is due."""
    due = await fetch_one(tx, _CLAIM, {"now": now, "skip": list(skip)})
    if due is None:
        return None
    mps = max(due.broadcast_mps, 0.001)
    batch = Batch(due.id, due.channel, mps, started=due.paced_at is None)
    start, allowed = allowance(due.paced_at, now, mps)
    channel = Channel(due.channel)
    if allowed:
        waiting = (
            await tx.execute(
                _IN_FLIGHT,
                {"broadcast_id": due.id, "look": IN_FLIGHT_LOOK * in_flight_cap(mps)},
            )
        ).scalar()
        allowed = min(allowed, max(in_flight_cap(mps) - int(waiting or 0), 0))
    for _ in range(MAX_LOOKS):
        wanted = allowed - len(batch.handed)
        if wanted <= 0:
            break
        queued = await fetch_all(tx, _QUEUED_RECIPIENTS, {"broadcast_id": due.id, "n": wanted})
        for recipient in queued:
            outgoing = Outgoing(
                personal_body(due.body, recipient.variables),
                due.content_sid,
                recipient.variables,
                Author.broadcast,
            )
            result = await hand_over(tx, due.account_id, channel, recipient.address, outgoing, now)
            if isinstance(result, Handed):
                batch.handed.append(result)
                await tx.execute(
                    _HANDED,
                    {"recipient_id": recipient.id, "message_id": result.message_id, "at": now},
                )
            else:
                batch.skipped += 1
                await tx.execute(_SKIPPED, {"recipient_id": recipient.id, "reason": result.reason})
        if len(queued) < wanted:
            batch.done = True
            await tx.execute(_DONE, {"broadcast_id": due.id, "now": now})
            batch.elapsed = (now - due.created_at).total_seconds()
            break
    paced = start + timedelta(seconds=len(batch.handed) / mps)
    await tx.execute(_PACED, {"broadcast_id": due.id, "paced": paced})
    return batch


class Broadcaster:
    """Runs `hand_over_batch` whenever a broadcast is due, in a working process."""

    def __init__(self, database: Database, runner: TaskRunner) -> None:
        self._database = database
        self._runner = runner
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """A broadcast was created in this process: look now."""
        self._poked.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="broadcaster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                wait = await self.run_due()
            except Exception:
                log.exception("broadcast.failed")
                wait = IDLE_SECONDS
            self._poked.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._poked.wait()
            except TimeoutError:
                pass

    async def run_due(self) -> float:
        """Hand over every due batch; seconds until the next one may be due."""
        waiting: set[int] = set()
        while True:
            async with self._database.transaction(durable=False) as tx:
                now = utcnow()
                batch = await hand_over_batch(tx, now, skip=waiting)
                if batch is None:
                    # None due: when one will be, in the same transaction (an idle process
                    # looks once a second, with one transaction).
                    next_due: datetime | None = (await tx.execute(_NEXT_DUE, {"now": now})).scalar()
                    break
            await self._after(batch)
            if not batch.handed and not batch.done:
                # Waiting for what it handed over to be sent: look again at the next tick.
                waiting.add(batch.broadcast_id)
        if next_due is None:
            for channel in Channel:
                BROADCAST_PACE.labels(channel.value).set(0)
            return IDLE_SECONDS
        return min(max((next_due - now).total_seconds(), MIN_TICK_SECONDS), IDLE_SECONDS)

    async def _after(self, batch: Batch) -> None:
        """Once committed: wake the reply worker for what was handed over, and count it."""
        if batch.handed:
            if self._database.driver_pool is not None:
                self._runner.wake()  # the batch made the conversations due
            else:
                for handed in batch.handed:
                    await self._runner.defer(handed.conversation_id)
        OUTREACH.labels(batch.channel, "broadcast", "queued").inc(len(batch.handed))
        OUTREACH.labels(batch.channel, "broadcast", "skipped").inc(batch.skipped)
        BROADCAST_PACE.labels(batch.channel).set(0 if batch.done else batch.mps)
        if batch.started:
            log.info("broadcast.started", broadcast_id=batch.broadcast_id, mps=batch.mps)
        log.debug(
            "broadcast.batch",
            broadcast_id=batch.broadcast_id,
            handed=len(batch.handed),
            skipped=batch.skipped,
            mps=batch.mps,
        )
        if batch.done:
            log.info(
                "broadcast.done", broadcast_id=batch.broadcast_id, seconds=round(batch.elapsed, 1)
            )
