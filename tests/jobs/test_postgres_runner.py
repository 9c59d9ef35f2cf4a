"""The PostgreSQL runner: reply tasks queued on the conversation rows (reply_due_at), claimed with
their leases by any number of processes, and woken by one coalesced NOTIFY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from platica import db
from platica.jobs.locks import LeaseLocks
from platica.jobs.postgres import PostgresRunner
from platica.jobs.queue import PARK_AFTER_CRASHES, WAKE_CHANNEL
from platica.models import ReplyState, utcnow
from tests.conftest import LiveServer, make_settings, truncate_all
from tests.factories import inbound_form, post_signed
from tests.jobs.test_runner import Seeder, old_inbound
from tests.polling import eventually
from tests.records import open_engine

pytestmark = pytest.mark.postgres

DEADLINE_SECONDS = 10.0


@dataclass(frozen=True)
class Run:
    conversation_id: int
    wait: float | None


class Handler:
    """A claiming reply task (as replies/pipeline.py's reply_to_next_due): claims the next due
    conversation under its lease, records the run, answers from a script (a wait, an exception,
    or an Event to block on; then None) and gives its lease back, whatever happens."""

    def __init__(self, engine: AsyncEngine, *answers: Any) -> None:
        self.engine = engine
        self.locks = LeaseLocks(db.create_sessionmaker(engine))
        self.runs: list[tuple[int, str, str | None]] = []
        self.answers = list(answers)

    async def __call__(self, on_claim: Callable[[int | None, bool], None]) -> Run | None:
        async with self.locks.claim_due(on_claim) as lease:
            async with db.transaction(self.engine, durable=False) as connection:
                row = await lease.take(connection)
            if row is None:
                return None
            async with self.engine.connect() as connection:
                owner = await connection.scalar(
                    text("SELECT lease_owner FROM conversations WHERE id = :id"),
                    {"id": lease.conversation_id},
                )
            self.runs.append((lease.conversation_id, lease.owner, owner))
            answer = self.answers.pop(0) if self.answers else None
            if isinstance(answer, asyncio.Event):
                await answer.wait()
                return Run(lease.conversation_id, None)
            if isinstance(answer, Exception):
                raise answer
            return Run(lease.conversation_id, answer)

    def ran(self, conversation_id: int) -> int:
        return sum(1 for run in self.runs if run[0] == conversation_id)


class Queue:
    """Seeded conversations, their due times, and runners (as separate processes would have)."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine
        self.seeder = Seeder(db.create_sessionmaker(engine))
        self.runners: list[PostgresRunner] = []

    async def conversation(self, due_in: float | None = 0.0) -> int:
        conversation_id = await self.seeder.conversation(**old_inbound(ReplyState.pending))
        if due_in is not None:
            await self.execute(
                "UPDATE conversations SET reply_due_at = :due WHERE id = :id",
                due=utcnow() + timedelta(seconds=due_in),
                id=conversation_id,
            )
        return conversation_id

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(sql), params)

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as connection:
            return await connection.scalar(text(sql), params)

    async def runner(self, handler: Any, *, work: bool = True, **kwargs: Any) -> PostgresRunner:
        runner = PostgresRunner(self.url, self.engine, handler, **kwargs)
        await runner.start(work=work)
        self.runners.append(runner)
        return runner


@pytest.fixture
async def queue(postgres_url: str) -> AsyncIterator[Queue]:
    truncate_all(postgres_url)
    async with open_engine(postgres_url) as engine:
        created = Queue(postgres_url, engine)
        try:
            yield created
        finally:
            for runner in created.runners:
                await runner.stop()


class TestClaiming:
    async def test_a_due_conversation_runs_once_under_the_lease_it_was_claimed_with(self, queue):
        handler = Handler(queue.engine)
        conversation = await queue.conversation()
        await queue.runner(handler)

        await eventually(lambda: handler.ran(conversation) == 1, "the run")
        ((_, claimed_by, owner),) = handler.runs
        assert owner == claimed_by
        assert await queue.scalar("SELECT reply_due_at FROM conversations") is None

    async def test_two_processes_run_each_conversation_once(self, queue):
        handler = Handler(queue.engine)
        conversations = [await queue.conversation() for _ in range(30)]
        await queue.runner(handler, concurrency=5)
        await queue.runner(handler, concurrency=5)

        await eventually(lambda: len(handler.runs) >= 30, "every conversation's run")
        await asyncio.sleep(0)  # nothing else may be running
        assert sorted(run[0] for run in handler.runs) == sorted(conversations)

    async def test_a_conversation_due_later_waits_for_its_time(self, queue):
        handler = Handler(queue.engine)
        later = await queue.conversation(due_in=0.5)
        now = await queue.conversation(due_in=0.0)
        await queue.runner(handler)

        await eventually(lambda: handler.ran(now) == 1, "the due conversation's run")
        assert handler.ran(later) == 0
        await eventually(lambda: handler.ran(later) == 1, "the later conversation's run")

    async def test_nothing_due_runs_nothing(self, queue):
        handler = Handler(queue.engine)
        idle = await queue.conversation(due_in=None)
        due = await queue.conversation()
        await queue.runner(handler)

        await eventually(lambda: handler.ran(due) == 1, "the due conversation's run")
        assert handler.ran(idle) == 0

    async def test_a_leased_conversation_waits_for_its_lease(self, queue, monkeypatch):
        # A lease running out wakes no one: the worker finds it when it next looks.
        monkeypatch.setattr("platica.jobs.postgres.POLL_SECONDS", 0.2)
        handler = Handler(queue.engine)
        conversation = await queue.conversation()
        await queue.execute(
            "UPDATE conversations SET lease_owner = 'someone', lease_expires_at = :until",
            until=utcnow() + timedelta(seconds=0.5),
        )
        await queue.runner(handler)

        await eventually(lambda: handler.ran(conversation) == 1, "the run after the lease")
        assert handler.runs[0][2] != "someone"

    async def test_the_tasks_wait_makes_it_due_again(self, queue):
        handler = Handler(queue.engine, 0.05)
        conversation = await queue.conversation()
        await queue.runner(handler)

        await eventually(lambda: handler.ran(conversation) == 2, "the second run")

    async def test_a_crashing_task_is_retried(self, queue, monkeypatch):
        monkeypatch.setattr("platica.jobs.runner.CRASH_RETRY_SECONDS", 0.05)
        handler = Handler(queue.engine, RuntimeError("boom"))
        conversation = await queue.conversation()
        await queue.runner(handler)

        await eventually(lambda: handler.ran(conversation) == 2, "the retry")

    async def test_a_conversation_that_keeps_crashing_is_parked(self, queue, monkeypatch):
        monkeypatch.setattr("platica.jobs.runner.CRASH_RETRY_SECONDS", 0.02)
        handler = Handler(queue.engine, *[RuntimeError("boom")] * (PARK_AFTER_CRASHES + 3))
        stuck = await queue.conversation()
        await queue.runner(handler)

        await eventually(
            lambda: queue.scalar("SELECT parked_at IS NOT NULL FROM conversations"), "parking"
        )

        assert handler.ran(stuck) == PARK_AFTER_CRASHES
        assert await queue.scalar("SELECT crash_count FROM conversations") == PARK_AFTER_CRASHES
        assert await queue.scalar("SELECT reply_due_at FROM conversations") is None
        assert "RuntimeError: boom" in await queue.scalar("SELECT parked_error FROM conversations")

    async def test_a_parked_conversation_is_not_claimed(self, queue):
        handler = Handler(queue.engine)
        parked = await queue.conversation()
        await queue.execute(
            "UPDATE conversations SET parked_at = now(), parked_error = 'boom', crash_count = 5"
            " WHERE id = :id",
            id=parked,
        )
        other = await queue.conversation(due_in=0.05)
        await queue.runner(handler)

        await eventually(lambda: handler.ran(other) == 1, "the other conversation's run")
        assert handler.ran(parked) == 0
        # Made due by a new message, it is taken off the queue (not claimed in a loop), and
        # left parked, its lease free.
        await eventually(
            lambda: queue.scalar(
                "SELECT reply_due_at IS NULL FROM conversations WHERE id = :id", id=parked
            ),
            "the parked conversation off the queue",
        )
        row = await queue.scalar(
            "SELECT parked_at IS NOT NULL AND lease_owner IS NULL FROM conversations"
            " WHERE id = :id",
            id=parked,
        )
        assert row
        assert handler.ran(parked) == 0

    async def test_no_more_tasks_than_its_concurrency(self, queue):
        gate = asyncio.Event()
        handler = Handler(queue.engine, gate, gate, gate, gate, gate)
        for _ in range(5):
            await queue.conversation()
        await queue.runner(handler, concurrency=2)

        await eventually(lambda: len(handler.runs) == 2, "two runs")
        await asyncio.sleep(0.2)  # the scenario: the slots stay full for a while
        assert len(handler.runs) == 2
        gate.set()
        await eventually(lambda: len(handler.runs) == 5, "the other runs")

    async def test_stopping_makes_the_unfinished_conversations_due_again(self, queue):
        handler = Handler(queue.engine, asyncio.Event())
        conversation = await queue.conversation()
        runner = await queue.runner(handler)
        await eventually(lambda: handler.ran(conversation) == 1, "the run")

        await runner.stop()
        queue.runners.remove(runner)

        assert await queue.scalar("SELECT reply_due_at FROM conversations") is not None
        assert await queue.scalar("SELECT lease_owner FROM conversations") is None


class TestRescue:
    async def test_a_rescue_makes_due_only_what_nothing_queued(self, queue):
        lost = await queue.conversation(due_in=None)
        waiting = await queue.conversation(due_in=60)
        runner = await queue.runner(Handler(queue.engine), work=False)
        before = await queue.scalar(
            "SELECT reply_due_at FROM conversations WHERE id = :id", id=waiting
        )

        assert await runner.rescue([lost, waiting]) == 1

        assert (
            await queue.scalar("SELECT reply_due_at FROM conversations WHERE id = :id", id=waiting)
            == before
        )
        assert await queue.scalar(
            "SELECT reply_due_at IS NOT NULL FROM conversations WHERE id = :id", id=lost
        )


class TestWaking:
    async def test_a_deferred_conversation_runs_without_waiting_for_the_poll(
        self, queue, monkeypatch
    ):
        monkeypatch.setattr("platica.jobs.postgres.POLL_SECONDS", 60.0)
        handler = Handler(queue.engine)
        conversation = await queue.conversation(due_in=None)
        await queue.runner(handler)
        await asyncio.sleep(0.2)  # the worker is waiting, idle

        api = await queue.runner(handler, work=False)
        await api.defer(conversation)

        await eventually(lambda: handler.ran(conversation) == 1, "the run")

    async def test_a_webhook_wakes_the_workers(self, queue, live_server, monkeypatch):
        monkeypatch.setattr("platica.jobs.postgres.POLL_SECONDS", 60.0)
        settings = make_settings(queue.url)
        server: LiveServer = live_server(settings, worker=False)
        await queue.execute("UPDATE channel_configs SET debounce_seconds = 0")
        handler = Handler(queue.engine)
        await queue.runner(handler)
        await asyncio.sleep(0.2)

        def post() -> httpx.Response:
            with httpx.Client(timeout=30) as client:
                return post_signed(client, server.url, "/webhook/sms", inbound_form())

        assert (await asyncio.to_thread(post)).status_code == 200
        await eventually(lambda: len(handler.runs) == 1, "the run the webhook queued")

    async def test_the_listener_comes_back_after_its_connection_is_dropped(
        self, queue, monkeypatch
    ):
        monkeypatch.setattr("platica.jobs.postgres.POLL_SECONDS", 60.0)
        monkeypatch.setattr("platica.jobs.postgres.LISTEN_RETRY_SECONDS", 0.05)
        handler = Handler(queue.engine)
        await queue.runner(handler)
        await eventually_listening(queue, 1)
        async with queue.engine.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        await eventually_listening(queue, 1)

        conversation = await queue.conversation(due_in=None)
        api = await queue.runner(handler, work=False)
        await api.defer(conversation)

        await eventually(lambda: handler.ran(conversation) == 1, "the run")


async def eventually_listening(queue: Queue, count: int) -> None:
    await eventually(
        lambda: queue.scalar(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%' AND state = 'idle'"
        ),
        f"{count} idle listener(s)",
        holds=lambda listening: listening == count,
    )


class Listener:
    """A LISTEN connection on the workers' channel, counting the notifications."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.count = 0

    async def wait_for(self, count: int, what: str) -> int:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while self.count < count:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what} (got {self.count})")
            async for _ in self.connection.notifies(timeout=0.05, stop_after=1):
                self.count += 1
        return self.count


@pytest.fixture
async def listener(postgres_url: str) -> AsyncIterator[Listener]:
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
        await connection.execute(f'LISTEN "{WAKE_CHANNEL}"')
        yield Listener(connection)


async def never_called(_on_claim: Callable[[int | None, bool], None]) -> None:
    raise AssertionError("no worker runs here")


class TestWake:
    async def test_wakes_in_one_go_send_one_notification(self, queue, listener):
        runner = await queue.runner(never_called, work=False)
        for _ in range(50):
            runner.wake()
        await listener.wait_for(1, "the first wake-up")

        runner.wake()  # a marker: anything sent between the two would arrive before it
        assert await listener.wait_for(2, "the marker") == 2

    async def test_a_wake_while_one_is_on_its_way_is_sent_after_it(
        self, queue, listener, monkeypatch
    ):
        runner = await queue.runner(never_called, work=False)
        in_flight, release = asyncio.Event(), asyncio.Event()
        real = AsyncEngine.connect

        def slow_connect(engine: AsyncEngine) -> Any:
            in_flight.set()
            return _after(release, real(engine))

        monkeypatch.setattr(AsyncEngine, "connect", slow_connect)
        runner.wake()
        await asyncio.wait_for(in_flight.wait(), DEADLINE_SECONDS)
        runner.wake()
        runner.wake()
        release.set()

        assert await listener.wait_for(2, "the second wake-up") == 2

    async def test_after_a_failed_wake_the_next_one_works(self, queue, listener, monkeypatch):
        runner = await queue.runner(never_called, work=False)
        failed = asyncio.Event()
        real = AsyncEngine.connect

        def failing_once(engine: AsyncEngine) -> Any:
            if not failed.is_set():
                failed.set()
                raise psycopg.OperationalError("the server closed the connection")
            return real(engine)

        monkeypatch.setattr(AsyncEngine, "connect", failing_once)
        runner.wake()
        await asyncio.wait_for(failed.wait(), DEADLINE_SECONDS)
        runner.wake()

        assert await listener.wait_for(1, "the wake-up after the failure") == 1


class _after:
    """An async context manager that enters `inner` once `event` is set."""

    def __init__(self, event: asyncio.Event, inner: Any) -> None:
        self.event, self.inner = event, inner

    async def __aenter__(self) -> Any:
        await self.event.wait()
        return await self.inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> Awaitable[Any]:
        return await self.inner.__aexit__(*exc)  # type: ignore[no-any-return]
