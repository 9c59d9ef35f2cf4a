"""PostgreSQL's reply tasks: the conversation row is the job (jobs/queue.py), shared by every
serve and worker process on the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from platica.db import DriverPool, conninfo, transaction
from platica.jobs import queue
from platica.jobs.queue import NOTIFY_SQL, WAKE_CHANNEL
from platica.jobs.runner import STOP_TIMEOUT_SECONDS, after_crash
from platica.logging import get_logger
from platica.models import utcnow

log = get_logger(__name__)

# How often workers look for due work with no notification, and how long they wait after a
# failed claim or LISTEN.
POLL_SECONDS = 5.0
CLAIM_RETRY_SECONDS = 1.0
LISTEN_RETRY_SECONDS = 1.0


class ClaimedRun(Protocol):
    @property
    def conversation_id(self) -> int: ...

    @property
    def wait(self) -> float | None:
        """Seconds until it should run again, or None when done."""
        ...


class ClaimingTask(Protocol):
    """The reply task that claims its conversation (replies/pipeline.py: reply_to_next_due):
    it tells `on_claim` which conversation it claimed (None: nothing was due) and whether
    another is due too, as soon as it knows, and returns what it claimed, if anything."""

    def __call__(
        self, on_claim: Callable[[int | None, bool], None]
    ) -> Awaitable[ClaimedRun | None]: ...


class PostgresRunner:
    """Reply tasks queued on the conversations themselves, shared by every serve and worker
    process on the database.

    A conversation is due when `reply_due_at` has passed: the webhook's statement sets it with
    the message (debounce included), `defer` sets it for anything else. While a working process
    has a free task slot and work may be due, it starts a task that claims the due conversation
    nobody holds that has waited longest, as the first statement of its first transaction (one
    UPDATE ... FOR UPDATE SKIP LOCKED that takes the lease and clears the due time: processes
    never claim the same one), and, as soon as that claim finds another conversation due too,
    the next task.
    A task that asks to run again makes the conversation due again; a new message during a task
    makes it due too, and it is claimed once the task gives its lease back. A process that dies
    leaves its leases to expire, and the sweeper makes their conversations due again.

    Workers wait for the next due time, for a notification (`wake`, LISTEN on WAKE_CHANNEL), or
    for a free slot, and look anyway every POLL_SECONDS.
    """

    def __init__(
        self,
        database_url: str,
        engine: AsyncEngine,
        claim_next: ClaimingTask,
        concurrency: int = 50,
        driver_pool: DriverPool | None = None,
    ) -> None:
        self._conninfo = conninfo(database_url)
        self._engine = engine
        self._claim_next = claim_next
        self._concurrency = concurrency
        # Where wake-ups go out: the webhook's psycopg pool when there is one (a NOTIFY follows
        # every burst of webhooks), else the engine.
        self._driver_pool = driver_pool
        # Running tasks, with the conversation each claimed (None until it has claimed one).
        self._running: dict[asyncio.Task[None], int | None] = {}
        # A task has been started and has not yet said what its claim found.
        self._claiming = False
        # Whether a due conversation may be waiting (a wake-up, or the last claim found one).
        self._maybe_due = True
        self._nudged = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self._wake_pending = False

    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        await self._make_due([conversation_id], delay)
        self.wake()

    async def rescue(self, conversation_ids: list[int]) -> int:
        async with transaction(
            self._engine, durable=False, driver_pool=self._driver_pool
        ) as connection:
            result = await connection.execute(
                queue.RESCUE, {"ids": conversation_ids, "now": utcnow()}
            )
        if result.rowcount:
            self.wake()
        return result.rowcount

    async def _make_due(self, conversation_ids: list[int], delay: float = 0.0) -> None:
        due = utcnow() + timedelta(seconds=max(delay, 0.0))
        # Not durable: a due time a database crash forgets is found again by the sweeper.
        async with transaction(
            self._engine, durable=False, driver_pool=self._driver_pool
        ) as connection:
            await connection.execute(queue.MAKE_DUE, {"ids": conversation_ids, "due": due})

    def wake(self) -> None:
        """Tell every working process to look for due conversations now.

        One notification at a time: wake-ups asked for while one is on its way are sent as one,
        as soon as it is done. Under load that is one NOTIFY for many messages; idle, a message is
        announced at once. A lost notification only delays the reply until the workers next look.
        """
        self._wake_pending = True
        if self._waker is None or self._waker.done():
            self._waker = asyncio.create_task(self._notify_workers(), name="wake-workers")

    async def _notify_workers(self) -> None:
        while self._wake_pending:
            self._wake_pending = False
            try:
                if self._driver_pool is not None:
                    async with self._driver_pool.connection() as driver:
                        await driver.execute(NOTIFY_SQL)
                else:
                    async with self._engine.connect() as connection:
                        await connection.execution_options(isolation_level="AUTOCOMMIT")
                        await connection.exec_driver_sql(NOTIFY_SQL)
            except Exception as error:
                log.warning("worker.wake_failed", error=str(error))
                return

    async def start(self, *, work: bool) -> None:
        if work:
            self._listener = asyncio.create_task(self._listen(), name="worker-listener")
            self._dispatcher = asyncio.create_task(self._dispatch(), name="worker-dispatcher")

    def _nudge(self, *, due: bool = False) -> None:
        self._maybe_due = self._maybe_due or due
        self._nudged.set()

    async def _listen(self) -> None:
        """LISTEN for wake-ups, reconnecting when the connection drops."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f'LISTEN "{WAKE_CHANNEL}"')
                    self._nudge(due=True)  # whatever was announced while nobody listened
                    async for _ in connection.notifies():
                        self._nudge(due=True)
            except (psycopg.Error, OSError) as error:
                log.warning("worker.listen_failed", error=str(error))
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    async def _dispatch(self) -> None:
        while True:
            self._nudged.clear()
            try:
                wait = await self._start_next()
            except Exception as error:
                # The database is away: try again shortly; the tasks already started go on.
                log.warning("worker.claim_failed", error=str(error))
                wait = CLAIM_RETRY_SECONDS
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudged.wait(), wait)

    async def _start_next(self) -> float:
        """Start the next claiming task if a slot is free and work may be due; seconds until it
        is worth looking again (0: at once)."""
        if self._claiming or len(self._running) >= self._concurrency:
            return POLL_SECONDS  # the claim's outcome, or a task that ends, nudges
        if not self._maybe_due:
            async with self._engine.connect() as connection:
                next_due = await connection.scalar(queue.NEXT_DUE, {"now": utcnow()})
            if next_due is None:
                return POLL_SECONDS
            seconds: float = (next_due - utcnow()).total_seconds()
            if seconds > 0:
                return min(seconds, POLL_SECONDS)
        self._maybe_due = False
        self._claiming = True
        task = asyncio.create_task(self._run(), name="reply")
        self._running[task] = None
        task.add_done_callback(self._finished)
        return POLL_SECONDS

    async def _run(self) -> None:
        task = asyncio.current_task()

        def claimed(conversation_id: int | None, more_due: bool) -> None:
            if task is not None and task in self._running:
                self._running[task] = conversation_id
            self._claiming = False
            self._nudge(due=more_due)

        try:
            result = await self._claim_next(claimed)
            wait = None if result is None else result.wait
        except Exception as error:
            wait = after_crash(error, self._running.get(task) if task is not None else None)
        conversation_id = self._running.get(task) if task is not None else None
        if self._claiming and conversation_id is None:
            claimed(None, False)  # it failed before its claim said anything
        if wait is not None and conversation_id is not None:
            try:
                await self._make_due([conversation_id], wait)
            except Exception as error:
                # The database is away: the sweeper finds the conversation's unanswered
                # messages again.
                log.warning(
                    "worker.requeue_failed", conversation_id=conversation_id, error=str(error)
                )

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._nudged.set()  # a slot is free

    async def stop(self) -> None:
        for task in (self._dispatcher, self._listener, self._waker):
            if task is not None:
                task.cancel()
        running = dict(self._running)
        for task in running:
            task.cancel()
        tasks = [t for t in (self._dispatcher, self._listener, self._waker, *running) if t]
        if tasks:
            # Bounded: a task's lease is given back as it is cancelled, unless the database is gone.
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)
        self._dispatcher = self._listener = self._waker = None
        cut_short = [conversation for conversation in running.values() if conversation]
        if cut_short:
            # Their work was cut short: due again at once, for this process's next start or
            # for another worker, rather than at the sweeper's next look.
            try:
                await asyncio.wait_for(self._make_due(cut_short), STOP_TIMEOUT_SECONDS)
            except Exception as error:
                log.warning("worker.requeue_failed", error=str(error))
