"""How reply tasks run: Procrastinate on PostgreSQL, an in-process runner on SQLite.

Both run the same task, `reply_to_conversation(conversation_id)`, which returns how long to wait
before running it again (debounce, a busy lock, a failing service) or None when it is done.
Neither queue is the source of truth: a sweeper re-queues, at start-up and periodically, every
conversation whose stored messages still need work, so a crash between storing a message and
queueing its task loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.conversations import repository
from platica.db import transaction
from platica.logging import get_logger
from platica.models import utcnow

log = get_logger(__name__)

Handler = Callable[[int], Awaitable[float | None]]

TASK_NAME = "reply_to_conversation"
QUEUE = "replies"
# At most one waiting job per conversation: its queueing lock is this and the conversation's id.
QUEUEING_LOCK_PREFIX = "conversation:"
# How long to wait before re-running a task that raised, and how often the sweeper looks.
# What Procrastinate's workers listen for (its channel for the queue, and a job_inserted event).
WAKE_CHANNEL = f"procrastinate_queue_v1#{QUEUE}"
WAKE_PAYLOAD = '{"type": "job_inserted", "job_id": null}'
CRASH_RETRY_SECONDS = 5.0
SWEEP_INTERVAL_SECONDS = 10.0
# Work younger than this is someone's in-flight task, not a leftover.
SWEEP_GRACE_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0


class TaskRunner(Protocol):
    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        """Queue the conversation's reply task to run after `delay` seconds."""
        ...

    def wake(self) -> None:
        """Tell the workers that reply tasks were queued in SQL, by the webhook's statement."""
        ...

    async def start(self, *, work: bool) -> None:
        """Get ready to queue tasks and, when `work`, start running them."""
        ...

    async def stop(self) -> None: ...


async def run_handler(handler: Handler, conversation_id: int) -> float | None:
    """Run the task; a crash in it is logged and retried later, never lost or fatal."""
    try:
        return await handler(conversation_id)
    except Exception:
        log.exception("task.crashed", conversation_id=conversation_id)
        return CRASH_RETRY_SECONDS


class InProcessRunner:
    """Tasks on asyncio in this process: a timer per conversation and a bounded pool of workers."""

    def __init__(self, handler: Handler, concurrency: int = 50) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._due: dict[int, float] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ready: asyncio.Queue[int] = asyncio.Queue()
        self._waiting: set[int] = set()  # in the ready queue, not yet picked up
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
        while True:
            conversation_id = await self._ready.get()
            self._waiting.discard(conversation_id)
            wait = await run_handler(self._handler, conversation_id)
            if wait is not None:
                await self.defer(conversation_id, wait)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []


def psycopg_conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ProcrastinateRunner:
    """Tasks as Procrastinate jobs in PostgreSQL, shared by every serve and worker process.

    A queueing lock keeps at most one waiting job per conversation; the task takes the
    conversation's advisory lock itself (see jobs/locks.py), which, unlike a job lock, cannot
    outlive a killed worker.
    """

    def __init__(self, database_url: str, handler: Handler, concurrency: int = 50) -> None:
        import procrastinate

        self._handler = handler
        self._concurrency = concurrency
        self._app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=psycopg_conninfo(database_url),
                # Job bookkeeping need not wait for the disk: a job whose state a database
                # crash forgets runs again, and the task is safe to run again. The jobs that
                # matter are inserted with the message, in the webhook's durable transaction.
                kwargs={"options": "-c synchronous_commit=off"},
            )
        )
        self._worker: asyncio.Task[None] | None = None
        self._opened = False
        self._waker: asyncio.Task[None] | None = None
        self._wake_pending = False

        @self._app.task(name=TASK_NAME, queue=QUEUE)
        async def reply_to_conversation(conversation_id: int) -> None:
            wait = await run_handler(self._handler, conversation_id)
            if wait is not None:
                await self.defer(conversation_id, wait)

        self._task = reply_to_conversation

    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        import procrastinate.exceptions

        options: dict[str, object] = {"queueing_lock": f"{QUEUEING_LOCK_PREFIX}{conversation_id}"}
        if delay > 0:
            options["schedule_in"] = {"seconds": delay}
        # AlreadyEnqueued: a waiting job will look at the whole conversation anyway.
        with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued):
            await self._task.configure(**options).defer_async(conversation_id=conversation_id)  # type: ignore[arg-type]

    def wake(self) -> None:
        """Notify the workers of jobs the webhook's statement inserted (quietly, revision 0006).

        One notification at a time: jobs queued while one is on its way are announced by the
        next, sent as soon as it is done. Under load that is one NOTIFY for many jobs; idle, a
        job is announced at once. A lost notification only delays the job until the workers
        next look for work.
        """
        self._wake_pending = True
        if self._waker is None or self._waker.done():
            self._waker = asyncio.create_task(self._notify_workers(), name="wake-workers")

    async def _notify_workers(self) -> None:
        while self._wake_pending:
            self._wake_pending = False
            try:
                await self._app.connector.execute_query_async(
                    "SELECT pg_notify(%(channel)s, %(payload)s)",
                    channel=WAKE_CHANNEL,
                    payload=WAKE_PAYLOAD,
                )
            except Exception as error:
                log.warning("worker.wake_failed", error=str(error))
                return

    async def start(self, *, work: bool) -> None:
        await self._app.open_async()
        self._opened = True
        if work:
            self._worker = asyncio.create_task(
                self._app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=self._concurrency,
                    install_signal_handlers=False,
                    delete_jobs="successful",
                    update_heartbeat_interval=5.0,
                    stalled_worker_timeout=20.0,
                ),
                name="procrastinate-worker",
            )

    async def stop(self) -> None:
        if self._waker is not None:
            self._waker.cancel()
            await asyncio.gather(self._waker, return_exceptions=True)
            self._waker = None
        # Bounded: with the database gone, Procrastinate's shutdown would wait on it for long.
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(self._worker, return_exceptions=True), STOP_TIMEOUT_SECONDS
                )
            self._worker = None
        if self._opened:
            self._opened = False
            try:
                await asyncio.wait_for(self._app.close_async(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("worker.close_timed_out")


class Sweeper:
    """Re-queues conversations whose stored messages still need work."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], runner: TaskRunner) -> None:
        self._sessionmaker = sessionmaker
        self._runner = runner
        self._task: asyncio.Task[None] | None = None

    async def sweep(self, grace_seconds: float) -> int:
        older_than = utcnow() - timedelta(seconds=grace_seconds)
        async with transaction(self._sessionmaker) as session:
            conversation_ids = await repository.conversations_needing_work(session, older_than)
        for conversation_id in conversation_ids:
            await self._runner.defer(conversation_id)
        if conversation_ids:
            log.info("sweep.requeued", conversations=len(conversation_ids))
        return len(conversation_ids)

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
