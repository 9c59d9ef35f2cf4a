"""How reply tasks run: queued on the conversation rows on PostgreSQL, in-process on SQLite.

Both run the same task, `reply_to_conversation(conversation_id)`, which returns how long to wait
before running it again (debounce, a busy lock, a failing service) or None when it is done.
Neither queue is the source of truth: a sweeper re-queues, at start-up and periodically, every
conversation whose stored messages still need work, so a crash between storing a message and
queueing its task loses nothing.

A task that crashes is run again later, with exponential backoff and jitter by the crashes in a
row counted on its conversation; past a few the conversation is parked (jobs/locks.py): it is not
claimed, swept or run until an operator retries it, and it never holds up the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.db import Database, DriverPool, take_turns
from platica.jobs import queue
from platica.jobs.locks import TaskCrashed
from platica.jobs.turns import Turns
from platica.logging import get_logger
from platica.models import utcnow
from platica.ratelimit import backoff

log = get_logger(__name__)

Handler = Callable[[int], Awaitable[float | None]]


# How long to wait before re-running a task that raised (doubling with each crash in a row,
# up to CRASH_RETRY_MAX_SECONDS), and how often the sweeper looks.
CRASH_RETRY_SECONDS = 5.0
CRASH_RETRY_MAX_SECONDS = 300.0
SWEEP_INTERVAL_SECONDS = 10.0
# Work younger than this is someone's in-flight task, not a leftover.
SWEEP_GRACE_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0


class TaskRunner(Protocol):
    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        """Queue the conversation's reply task to run after `delay` seconds."""
        ...

    async def rescue(self, conversation_ids: list[int]) -> int:
        """Queue to run now those of the conversations nothing has queued, is running or will
        run (the sweeper's work: a wait already set is never cut short); how many it queued."""
        ...

    def wake(self) -> None:
        """Tell the workers that reply tasks were queued in SQL, by the webhook's statement."""
        ...

    async def start(self, *, work: bool) -> None:
        """Get ready to queue tasks and, when `work`, start running them."""
        ...

    async def stop(self) -> None: ...


async def commit_and_wake(
    session: AsyncSession, runner: TaskRunner | None, conversation_id: int | None = None
) -> None:
    """End a request's transaction: commit it, then (only then, so that the worker reads what
    was committed) queue `conversation_id`'s reply task. The one place a route commits."""
    await session.commit()
    if conversation_id is not None and runner is not None:
        await runner.defer(conversation_id)


def crash_backoff(crashes: int) -> float:
    """Seconds before running a task again after its `crashes`th crash in a row: exponential,
    with jitter so that what crashed together does not come back together."""
    return backoff(crashes, CRASH_RETRY_SECONDS, CRASH_RETRY_MAX_SECONDS)


def after_crash(error: Exception, conversation_id: int | None) -> float | None:
    """Log a task's crash; seconds before running it again, or None when its conversation is
    parked (an operator retries it)."""
    if not isinstance(error, TaskCrashed):
        # Before the task held its conversation, or the database failing: not counted.
        log.exception("task.crashed", conversation_id=conversation_id)
        return crash_backoff(1)
    log.exception("task.crashed", conversation_id=error.conversation_id, crashes=error.crashes)
    if error.parked:
        log.error(
            "task.parked",
            conversation_id=error.conversation_id,
            crashes=error.crashes,
            error=error.error,
        )
        return None
    return crash_backoff(error.crashes)


async def run_handler(
    handler: Callable[..., Awaitable[float | None]], conversation_id: int, **kwargs: Any
) -> float | None:
    """Run the task; a crash in it is logged and retried later (or its conversation parked),
    never lost or fatal."""
    try:
        return await handler(conversation_id, **kwargs)
    except Exception as error:
        return after_crash(error, conversation_id)


class InProcessRunner:
    """Tasks on asyncio in this process: a timer per conversation and a bounded pool of workers.

    Given the server's `turns`, the tasks yield to the requests it serves (jobs/turns.py): a
    task starts, and opens each of its transactions, in its turn.
    """

    def __init__(self, handler: Handler, concurrency: int = 50, turns: Turns | None = None) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._turns = turns
        self._due: dict[int, float] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ready: asyncio.Queue[int] = asyncio.Queue()
        self._waiting: set[int] = set()  # in the ready queue, not yet picked up
        self._running: set[int] = set()
        self._workers: list[asyncio.Task[None]] = []

    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        if conversation_id in self._waiting:
            return  # it runs as soon as a worker is free, which is as soon as it could
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        current = self._due.get(conversation_id)
        if current is not None and current <= due:
            return  # already due as soon or sooner
        if (timer := self._timers.pop(conversation_id, None)) is not None:
            timer.cancel()
        self._due[conversation_id] = due
        self._timers[conversation_id] = loop.call_at(due, self._make_ready, conversation_id)

    async def rescue(self, conversation_ids: list[int]) -> int:
        lost = [
            conversation_id
            for conversation_id in conversation_ids
            if conversation_id not in self._due
            and conversation_id not in self._waiting
            and conversation_id not in self._running
        ]
        for conversation_id in lost:
            await self.defer(conversation_id)
        return len(lost)

    def wake(self) -> None:
        """Nothing to do: on SQLite every task is queued through `defer`."""

    def _make_ready(self, conversation_id: int) -> None:
        self._timers.pop(conversation_id, None)
        self._due.pop(conversation_id, None)
        if conversation_id not in self._waiting:
            self._waiting.add(conversation_id)
            self._ready.put_nowait(conversation_id)

    async def start(self, *, work: bool) -> None:
        if work:
            self._workers = [
                asyncio.create_task(self._work(), name=f"reply-worker-{i}")
                for i in range(self._concurrency)
            ]

    async def _work(self) -> None:
        if self._turns is not None:
            take_turns(self._turns)
        while True:
            conversation_id = await self._ready.get()
            if self._turns is not None:
                await self._turns.wait()
            self._waiting.discard(conversation_id)
            self._running.add(conversation_id)
            try:
                wait = await run_handler(self._handler, conversation_id)
            finally:
                self._running.discard(conversation_id)
            if wait is not None:
                await self.defer(conversation_id, wait)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []


class Sweeper:
    """Re-queues conversations whose stored messages still need work."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        runner: TaskRunner,
        driver_pool: DriverPool | None = None,
    ) -> None:
        self._database = Database(sessionmaker, driver_pool)
        self._runner = runner
        self._task: asyncio.Task[None] | None = None

    async def sweep(self, grace_seconds: float) -> int:
        older_than = utcnow() - timedelta(seconds=grace_seconds)
        async with self._database.transaction(durable=False) as connection:
            conversation_ids = await queue.conversations_needing_work(connection, older_than)
        requeued = await self._runner.rescue(conversation_ids) if conversation_ids else 0
        if requeued:
            log.info("sweep.requeued", conversations=requeued)
        return requeued

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep(SWEEP_GRACE_SECONDS)
            except Exception:
                log.exception("sweep.failed")

    async def start(self, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        """Sweep everything now (nothing of ours is in flight yet), then periodically."""
        await self.sweep(grace_seconds=0)
        self._task = asyncio.create_task(self._loop(interval), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
