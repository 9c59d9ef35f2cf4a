"""Per-conversation leases, so one worker at a time answers a conversation, in order.

A lease is two columns on the conversation (owner, expiry), taken with one conditional UPDATE
and renewed while the work goes on. It works the same on SQLite and PostgreSQL and across any
number of processes; it holds no database connection while the LLM thinks; and when a worker
dies, its leases simply expire, so no conversation stays stuck.

The reply task takes, renews and gives back its lease inside its own transactions (`Lease`), so
that taking the lease also reads the conversation (UPDATE … RETURNING) and giving it back costs
no transaction of its own; `hold()` is the same with a transaction per step.

A task that crashes while it holds the lease gives it back with the crash counted on the
conversation (`crash_count`, reset by the next run that does not crash); after
PARK_AFTER_CRASHES in a row the conversation is parked (`parked_at`, `parked_error`): no lease
is taken on it, so no task runs on it, until an operator retries it. The runner learns of it
from TaskCrashed, to back off or stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

import psycopg
from sqlalchemy import Update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from platica.db import Database, DriverPool, Tx, Typed, fetch_one, transaction
from platica.jobs import queue
from platica.jobs.queue import Leased
from platica.logging import get_logger, mask_phone
from platica.models import utcnow

log = get_logger(__name__)

LEASE_SECONDS = 15.0
# The database itself failing (a restart, a dropped connection, a locked SQLite file) is no
# conversation's fault: such crashes are not counted.
_NOT_THE_CONVERSATIONS = (OSError, psycopg.OperationalError, OperationalError, InterfaceError)


class LeaseLost(Exception):
    """The lease expired and another worker may have taken the conversation: stop at once."""


class TaskCrashed(Exception):
    """The task crashed while it held the conversation's lease (the crash is its __cause__);
    counted on the conversation: the `crashes` in a row so far, and whether that parked it."""

    def __init__(self, conversation_id: int, crashes: int, parked: bool, error: str) -> None:
        super().__init__(f"conversation {conversation_id}: {error}")
        self.conversation_id = conversation_id
        self.crashes = crashes
        self.parked = parked
        self.error = error


def crash_report(error: BaseException) -> str:
    """What operators see of a crash (`parked_error`): its type and the first line of its
    message (the rest of a database error is the SQL and its parameters), numbers masked."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return mask_phone(text)[:500]


class ConversationLocks(Protocol):
    def lease(self, conversation_id: int) -> Lease:
        """A lease on the conversation, not yet taken (see `Lease`)."""
        ...

    def claim_due(self, on_claim: Callable[[int | None, bool], None] | None = None) -> Lease:
        """A lease whose first take() claims the due conversation that has waited longest
        (PostgreSQL's reply queue, see jobs/postgres.py), telling `on_claim` what it found and
        whether another conversation is due too."""
        ...

    def hold(self, conversation_id: int) -> AbstractAsyncContextManager[bool]:
        """Try to take the conversation's lock; yields whether it was taken (never waits)."""
        ...


class Lease:
    """One worker's lease on one conversation, for `async with`.

    `take()` and `release()` run in the caller's transaction; while the lease is held it is
    renewed in the background; at the end of the block it is given back unless a committed
    `release()` already did so.
    """

    def __init__(
        self,
        locks: LeaseLocks,
        conversation_id: int,
        *,
        claims_due: bool = False,
        on_claim: Callable[[int | None, bool], None] | None = None,
    ) -> None:
        # With claims_due, 0 until the first take() has claimed a conversation.
        self.conversation_id = conversation_id
        self.owner = uuid.uuid4().hex
        self.taken = False
        self.claims_due = claims_due
        # Told what the claim found (a conversation's id, or None; whether more are due) as
        # soon as it knows.
        self._on_claim = on_claim
        self._locks = locks
        self._released = False
        self._renewal: asyncio.Task[None] | None = None
        # The conversation is parked: take() refused it (an operator retries it).
        self.parked = False
        # Its crashes in a row when taken.
        self.crashes = 0

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id, "owner": self.owner, **extra}

    async def take(self, connection: Tx) -> Leased | None:
        """Take the lease (or, when held, extend it); the conversation's row, or None when
        another worker holds the lease (claiming: when nothing is due). Raises LeaseLost if a
        held lease was lost."""
        if self.taken:
            return await self.renew(connection)
        now = utcnow()
        expires_at = now + self._locks.lease_length
        if self.claims_due:
            claim = {"now": now, "owner": self.owner, "expires_at": expires_at}
            claimed = await fetch_one(connection, queue.CLAIM_DUE, claim)
            if claimed is not None:
                self.conversation_id = claimed.id
            if self._on_claim is not None:
                if claimed is None:
                    self._on_claim(None, False)
                else:
                    self._on_claim(claimed.id, bool(claimed.more_due))
            if claimed is not None and claimed.parked_at is not None:
                # A new message made a parked conversation due (the webhook does not look):
                # the claim took it off the queue; give the lease back and leave it parked.
                # (Not skipped by the claim itself: a filter on parked_at there has
                # PostgreSQL plan the claim as a scan of every conversation.)
                await connection.execute(queue.RELEASE, self._params())
                self.parked = True
                return None
            row = None if claimed is None else Leased._make(claimed[: len(Leased._fields)])
        else:
            params = self._params(now=now, expires_at=expires_at)
            row = await fetch_one(connection, queue.TAKE, params)
        if row is not None:
            self.taken = True
            self.crashes = row.crash_count or 0
            self._start_renewal()
        elif not self.claims_due:
            # Busy, or parked (rare: one more look, only then).
            parked = await connection.execute(queue.PARKED, self._params())
            self.parked = bool(parked.scalar())
        return row

    def _start_renewal(self) -> None:
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew_while_held(), name="lease-renewal")

    async def renew(
        self, connection: Tx, statement: Typed[Leased] = queue.RENEW, **params: Any
    ) -> Leased:
        """Extend the held lease with `statement` (see `queue.renew_statement`); the conversation's
        row. Raises LeaseLost when the lease is no longer this worker's."""
        expires_at = utcnow() + self._locks.lease_length
        row = await fetch_one(connection, statement, self._params(expires_at=expires_at, **params))
        if row is None:
            raise LeaseLost(f"conversation {self.conversation_id}")
        return row

    async def release(self, connection: Tx, statement: Update = queue.RELEASE) -> bool:
        """Give the lease back in the caller's transaction if `statement`'s conditions hold (see
        `queue.release_statement`); whether it was given back."""
        result = await connection.execute(statement, self._params())
        released = bool(result.rowcount)
        self._released = self._released or released
        return released

    async def _renew_while_held(self) -> None:
        """Extend the lease every third of its length for as long as the work lasts."""
        while True:
            await asyncio.sleep(self._locks.lease_length.total_seconds() / 3)
            try:
                async with self._locks.transaction() as connection:
                    await self.renew(connection)
            except LeaseLost:
                log.warning("lease.lost", conversation_id=self.conversation_id)
                return
            except Exception:
                # The next renewal may succeed; if none does, the lease lapses, as for a crash.
                log.warning(
                    "lease.renew_failed", conversation_id=self.conversation_id, exc_info=True
                )

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if (
            self.taken
            and isinstance(exc, Exception)
            and not isinstance(exc, (LeaseLost, *_NOT_THE_CONVERSATIONS))
        ):
            # Shielded, as below; the crash is what propagates, with how it was counted.
            crashed = await asyncio.shield(self._release_crashed(exc))
            if crashed is not None:
                raise crashed from exc
            return
        # A release inside a block that then failed may have been rolled back: give the lease
        # back again (a no-op if it is not this worker's any more). Shielded: a cancelled task
        # still hands its lease back.
        if self.taken and (exc_type is not None or not self._released):
            await asyncio.shield(self._release_alone())
        if self.taken and exc_type is None and self.crashes:
            await self._recovered()

    async def _release_alone(self) -> None:
        async with self._locks.transaction() as connection:
            await self.release(connection)

    async def _release_crashed(self, error: Exception) -> TaskCrashed | None:
        """Give the lease back with the crash counted; what it came to (None when the lease was
        not this worker's any more, or the database failed: the crash goes on as it is)."""
        report = crash_report(error)
        try:
            async with self._locks.transaction() as connection:
                row = await fetch_one(
                    connection, queue.CRASHED, self._params(now=utcnow(), error=report)
                )
        except _NOT_THE_CONVERSATIONS:
            log.warning("lease.crash_not_counted", conversation_id=self.conversation_id)
            return None
        if row is None:
            return None
        return TaskCrashed(self.conversation_id, row.crash_count, row.parked_at is not None, report)

    async def _recovered(self) -> None:
        """A run that did not crash after some that did: the count starts again."""
        try:
            async with self._locks.transaction() as connection:
                await connection.execute(queue.RECOVERED, self._params())
        except _NOT_THE_CONVERSATIONS:
            # The next successful run resets it.
            log.warning("lease.crash_count_not_reset", conversation_id=self.conversation_id)


class LeaseLocks:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        lease_seconds: float = LEASE_SECONDS,
        driver_pool: DriverPool | None = None,
    ) -> None:
        self.engine: AsyncEngine = Database(sessionmaker).engine
        self.driver_pool = driver_pool
        self.lease_length = timedelta(seconds=lease_seconds)

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction for a lease alone (not durable: a lost lease only lapses)."""
        return transaction(self.engine, durable=False, driver_pool=self.driver_pool)

    def lease(self, conversation_id: int) -> Lease:
        return Lease(self, conversation_id)

    def claim_due(self, on_claim: Callable[[int | None, bool], None] | None = None) -> Lease:
        return Lease(self, 0, claims_due=True, on_claim=on_claim)

    @asynccontextmanager
    async def hold(self, conversation_id: int) -> AsyncIterator[bool]:
        async with self.lease(conversation_id) as lease:
            async with self.transaction() as connection:
                taken = await lease.take(connection) is not None
            yield taken
