"""How reply tasks run: the in-process runner, the per-conversation locks, and the sweeper."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import structlog
from sqlalchemy import text

from platica import db
from platica.db import transaction
from platica.jobs.locks import LeaseLocks, TaskCrashed
from platica.jobs.queue import PARK_AFTER_CRASHES
from platica.jobs.runner import InProcessRunner, Sweeper, run_handler
from platica.jobs.turns import Turns
from platica.models import (
    Author,
    Channel,
    Conversation,
    Direction,
    MessageStatus,
    ReplyState,
    utcnow,
)
from tests.polling import eventually
from tests.records import add_account, add_conversation, add_message, open_engine

DEADLINE_SECONDS = 5.0


class Recorder:
    """A task handler that records each run and answers from a script (None once it runs out)."""

    def __init__(self, *answers: float | Exception | None) -> None:
        self.calls: list[int] = []
        self._answers = list(answers)

    async def __call__(self, conversation_id: int) -> float | None:
        self.calls.append(conversation_id)
        answer = self._answers.pop(0) if self._answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
async def start_runner() -> AsyncIterator[Callable[..., Awaitable[InProcessRunner]]]:
    """Start in-process runners with a handler; every one is stopped after the test."""
    runners: list[InProcessRunner] = []

    async def start(handler: Any, concurrency: int = 1) -> InProcessRunner:
        runner = InProcessRunner(handler, concurrency=concurrency)
        await runner.start(work=True)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        await runner.stop()


def worker_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("reply-worker-")]


class TestInProcessRunner:
    async def test_a_deferred_conversation_runs_once(self, start_runner):
        handler = Recorder()
        runner = await start_runner(handler)

        await runner.defer(1)
        # A later conversation through the same single worker: once it ran, 1 had every chance.
        await runner.defer(2, 0.1)
        await eventually(lambda: 2 in handler.calls, "conversation 2 to run")

        assert handler.calls == [1, 2]

    async def test_deferring_again_before_it_runs_runs_it_once(self, start_runner):
        handler = Recorder()
        runner = await start_runner(handler)

        await runner.defer(1, 0.05)
        await runner.defer(1, 0.05)
        await runner.defer(1, 0.1)
        await runner.defer(2, 0.3)
        await eventually(lambda: 2 in handler.calls, "conversation 2 to run")

        assert handler.calls == [1, 2]

    async def test_deferring_a_conversation_waiting_for_a_worker_runs_it_once(self, start_runner):
        release = asyncio.Event()
        calls: list[int] = []

        async def handler(conversation_id: int) -> None:
            calls.append(conversation_id)
            if conversation_id == 1:
                await release.wait()

        runner = await start_runner(handler)
        await runner.defer(1)
        await eventually(lambda: calls == [1], "the only worker to be busy with 1")
        await runner.defer(2)
        await eventually(lambda: runner._ready.qsize() == 1, "2 to wait for the worker")
        await runner.defer(2)  # e.g. the sweeper finding 2's work again
        await runner.defer(3, 0.05)
        release.set()
        # 3 is due after everything else: once it ran, any second run of 2 has happened.
        await eventually(lambda: 3 in calls, "conversation 3 to run")

        assert calls == [1, 2, 3]

    async def test_a_shorter_delay_replaces_a_longer_one(self, start_runner):
        handler = Recorder()
        runner = await start_runner(handler)

        await runner.defer(1, 60)
        await runner.defer(1, 0)

        await eventually(lambda: handler.calls == [1], "conversation 1 to run at once")

    async def test_a_longer_delay_does_not_postpone_a_shorter_one(self, start_runner):
        handler = Recorder()
        runner = await start_runner(handler)

        await runner.defer(1, 0.05)
        await runner.defer(1, 60)

        await eventually(lambda: handler.calls == [1], "conversation 1 to run soon")

    async def test_the_returned_wait_runs_it_again(self, start_runner):
        handler = Recorder(0.05, 0.05, None)
        runner = await start_runner(handler)

        await runner.defer(7)
        await eventually(lambda: len(handler.calls) == 3, "three runs")

        assert handler.calls == [7, 7, 7]

    async def test_a_crashing_handler_is_retried_and_the_worker_survives(
        self, start_runner, monkeypatch
    ):
        monkeypatch.setattr("platica.jobs.runner.CRASH_RETRY_SECONDS", 0.05)
        handler = Recorder(RuntimeError("boom"), None)
        runner = await start_runner(handler, concurrency=1)

        await runner.defer(1)
        await eventually(lambda: handler.calls == [1, 1], "the retry after the crash")
        await runner.defer(2)
        await eventually(lambda: handler.calls == [1, 1, 2], "the same worker to go on")

        assert len(worker_tasks()) == 1

    async def test_stop_cancels_the_running_task_and_the_workers(self):
        started = asyncio.Event()
        outcome: list[str] = []

        async def handler(conversation_id: int) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        runner = InProcessRunner(handler, concurrency=3)
        await runner.start(work=True)
        assert len(worker_tasks()) == 3
        await runner.defer(1)
        await runner.defer(2, 60)
        await asyncio.wait_for(started.wait(), DEADLINE_SECONDS)

        await asyncio.wait_for(runner.stop(), DEADLINE_SECONDS)

        assert outcome == ["cancelled"]
        assert worker_tasks() == []

    async def test_defer_without_workers_runs_nothing_until_started(self):
        handler = Recorder()
        runner = InProcessRunner(handler, concurrency=1)
        await runner.defer(1)
        await runner.defer(2, 0.05)
        await eventually(lambda: runner._ready.qsize() == 2, "both to be ready")
        assert handler.calls == []

        await runner.start(work=True)
        try:
            await eventually(lambda: handler.calls == [1, 2], "both to run once started")
        finally:
            await runner.stop()


class TestTakingTurns:
    """With the server's turns (SQLite's `platica serve`), tasks yield to its requests."""

    async def test_a_task_waits_while_a_request_is_served(self):
        turns = Turns(starve_seconds=3600)
        handler = Recorder()
        runner = InProcessRunner(handler, concurrency=1, turns=turns)
        await runner.start(work=True)
        try:
            turns.request_started()
            await runner.defer(1)
            await eventually(lambda: runner._ready.qsize() == 0, "a worker to pick it up")
            for _ in range(20):
                await asyncio.sleep(0)
            assert handler.calls == []

            turns.request_done()
            await eventually(lambda: handler.calls == [1], "the task to run once served")
        finally:
            await runner.stop()

    async def test_each_transaction_of_a_task_waits_for_its_turn(self, tmp_path):
        url = f"sqlite+aiosqlite:///{tmp_path}/turns.db"
        db.upgrade(url)
        engine = db.create_engine(url)
        turns = Turns(starve_seconds=3600)
        steps: list[str] = []

        async def handler(_conversation_id: int) -> None:
            steps.append("started")
            turns.request_started()  # a request arrives while the task runs
            transacting = asyncio.create_task(one_transaction())
            for _ in range(20):
                await asyncio.sleep(0)
            steps.append("waiting" if not transacting.done() else "not waiting")
            turns.request_done()
            await transacting

        async def one_transaction() -> None:
            async with transaction(engine, durable=False) as tx:
                await tx.execute(text("SELECT 1"))
            steps.append("transaction")

        runner = InProcessRunner(handler, concurrency=1, turns=turns)
        await runner.start(work=True)
        try:
            await runner.defer(1)
            await eventually(lambda: "transaction" in steps, "the transaction")
        finally:
            await runner.stop()
            await engine.dispose()
        assert steps == ["started", "waiting", "transaction"]


class TestRunHandler:
    async def test_returns_the_handlers_wait(self):
        assert await run_handler(Recorder(2.5), 1) == 2.5

    async def test_a_crash_becomes_the_crash_retry_wait(self, monkeypatch):
        monkeypatch.setattr("platica.jobs.runner.CRASH_RETRY_SECONDS", 0.05)

        wait = await run_handler(Recorder(ValueError("bad")), 1)

        assert wait is not None
        assert 0.05 * 0.75 <= wait <= 0.05


@pytest.fixture
async def leases(database_url: str) -> AsyncIterator[tuple[Seeder, Callable[..., LeaseLocks], Any]]:
    """A seeder for conversations and a factory of lease locks (as separate processes would
    have), on a real database."""
    async with open_engine(database_url) as engine:
        sessionmaker = db.create_sessionmaker(engine)

        def make(lease_seconds: float = 30.0) -> LeaseLocks:
            return LeaseLocks(sessionmaker, lease_seconds=lease_seconds)

        yield Seeder(sessionmaker), make, sessionmaker


async def lease_of(sessionmaker: Any, conversation_id: int) -> tuple[str | None, datetime | None]:
    async with sessionmaker() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        return conversation.lease_owner, conversation.lease_expires_at


class TestLeaseLocks:
    async def test_a_second_holder_fails_until_the_first_releases(self, leases):
        seeder, make, _ = leases
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        first, second = make(), make()

        async with first.hold(conversation) as taken, second.hold(conversation) as refused:
            assert (taken, refused) == (True, False)

        async with second.hold(conversation) as taken_later:
            assert taken_later is True

    async def test_different_conversations_do_not_block_each_other(self, leases):
        seeder, make, _ = leases
        one = await seeder.conversation(**old_inbound(ReplyState.pending))
        two = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with make().hold(one) as a, make().hold(two) as b:
            assert (a, b) == (True, True)

    async def test_a_refused_hold_leaves_the_holders_lease_in_place(self, leases):
        seeder, make, sessionmaker = leases
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with make().hold(conversation):
            owner, _ = await lease_of(sessionmaker, conversation)
            async with make().hold(conversation) as refused:
                assert refused is False
            assert (await lease_of(sessionmaker, conversation))[0] == owner
        assert await lease_of(sessionmaker, conversation) == (None, None)

    async def test_the_lease_is_released_when_the_holder_raises(self, leases):
        seeder, make, _ = leases
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        locks = make()

        with pytest.raises(TaskCrashed) as crashed:
            async with locks.hold(conversation):
                raise RuntimeError("task failed")
        assert isinstance(crashed.value.__cause__, RuntimeError)

        async with make().hold(conversation) as again:
            assert again is True

    async def test_a_dead_holders_lease_expires(self, leases):
        """A SIGKILLed worker releases nothing: its lease must lapse on its own."""
        seeder, make, sessionmaker = leases
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        async with db.session(sessionmaker) as session:
            dead = await session.get(Conversation, conversation)
            assert dead is not None
            dead.lease_owner, dead.lease_expires_at = "dead-worker", ago(1)

        async with make().hold(conversation) as taken:
            assert taken is True

    async def test_a_live_lease_is_renewed_past_its_length(self, leases):
        seeder, make, sessionmaker = leases
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        holder = make(lease_seconds=0.3)

        async with holder.hold(conversation) as taken:
            assert taken
            _, first_expiry = await lease_of(sessionmaker, conversation)
            # The scenario itself is time passing: the work outlasts the lease's length.
            await asyncio.sleep(0.6)
            async with make().hold(conversation) as refused:
                assert refused is False
            _, later_expiry = await lease_of(sessionmaker, conversation)
            assert first_expiry is not None
            assert later_expiry is not None
            assert later_expiry > first_expiry


class RecordingRunner:
    """A TaskRunner that only records what it was asked to defer."""

    def __init__(self) -> None:
        self.deferred: list[tuple[int, float]] = []

    async def defer(self, conversation_id: int, delay: float = 0.0) -> None:
        self.deferred.append((conversation_id, delay))

    async def rescue(self, conversation_ids: list[int]) -> int:
        for conversation_id in conversation_ids:
            self.deferred.append((conversation_id, 0.0))
        return len(conversation_ids)

    def wake(self) -> None:
        return None

    async def start(self, *, work: bool) -> None:
        return None

    async def stop(self) -> None:
        return None

    @property
    def ids(self) -> set[int]:
        return {conversation_id for conversation_id, _delay in self.deferred}


class Seeder:
    """Conversations with one message each, on a real database."""

    def __init__(self, sessionmaker: Any) -> None:
        self._sessionmaker = sessionmaker
        self._count = 0

    async def conversation(self, **message: Any) -> int:
        """A new conversation (with its own contact) holding one message with `message`'s columns."""
        self._count += 1
        async with db.session(self._sessionmaker) as session:
            number = f"+1500555{self._count:04d}"
            account = await add_account(
                session, f"Panadería {self._count}", numbers={Channel.sms: number}
            )
            conversation = await add_conversation(session, account.id, "+34600111222")
            await add_message(session, conversation, **message)
            return conversation.id

    async def set(self, conversation_id: int, **values: Any) -> None:
        """Set columns of a conversation."""
        async with db.session(self._sessionmaker) as session:
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None
            for name, value in values.items():
                setattr(conversation, name, value)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def old_inbound(state: ReplyState) -> dict[str, Any]:
    return {
        "direction": Direction.inbound,
        "author": Author.contact,
        "status": MessageStatus.received,
        "reply_state": state,
        "created_at": ago(120),
        "updated_at": ago(120),
    }


def outbound(status: MessageStatus, age: float) -> dict[str, Any]:
    return {
        "direction": Direction.outbound,
        "author": Author.ai,
        "status": status,
        "created_at": ago(age),
        "updated_at": ago(age),
    }


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[tuple[Seeder, Sweeper, RecordingRunner]]:
    runner = RecordingRunner()
    async with open_engine(database_url) as engine:
        sessionmaker = db.create_sessionmaker(engine)
        yield Seeder(sessionmaker), Sweeper(sessionmaker, runner), runner


class TestSweeper:
    async def test_requeues_an_old_unanswered_inbound_message(self, seeded):
        seeder, sweeper, runner = seeded
        pending = await seeder.conversation(**old_inbound(ReplyState.pending))

        assert await sweeper.sweep(grace_seconds=30) == 1

        assert runner.deferred == [(pending, 0.0)]

    async def test_requeues_old_outbound_messages_not_yet_sent(self, seeded):
        seeder, sweeper, runner = seeded
        pending = await seeder.conversation(**outbound(MessageStatus.pending, 120))
        sending = await seeder.conversation(**outbound(MessageStatus.sending, 120))

        assert await sweeper.sweep(grace_seconds=30) == 2

        assert runner.ids == {pending, sending}

    async def test_leaves_finished_work_alone(self, seeded):
        seeder, sweeper, runner = seeded
        for state in (ReplyState.answered, ReplyState.skipped, ReplyState.failed):
            await seeder.conversation(**old_inbound(state))
        for status in (
            MessageStatus.queued,
            MessageStatus.sent,
            MessageStatus.delivered,
            MessageStatus.failed,
            MessageStatus.dry_run,
        ):
            await seeder.conversation(**outbound(status, 120))

        assert await sweeper.sweep(grace_seconds=30) == 0

        assert runner.deferred == []

    async def test_leaves_work_younger_than_the_grace_alone(self, seeded):
        seeder, sweeper, runner = seeded
        young_inbound = {**old_inbound(ReplyState.pending), "created_at": ago(5)}
        await seeder.conversation(**young_inbound)
        await seeder.conversation(**outbound(MessageStatus.sending, 5))
        old = await seeder.conversation(**outbound(MessageStatus.sending, 120))

        await sweeper.sweep(grace_seconds=30)

        assert runner.ids == {old}

    async def test_no_grace_takes_everything_unfinished(self, seeded):
        seeder, sweeper, runner = seeded
        young_inbound = {**old_inbound(ReplyState.pending), "created_at": ago(1)}
        inbound = await seeder.conversation(**young_inbound)
        sending = await seeder.conversation(**outbound(MessageStatus.sending, 1))
        await seeder.conversation(**outbound(MessageStatus.sent, 1))

        assert await sweeper.sweep(grace_seconds=0) == 2

        assert runner.ids == {inbound, sending}

    async def test_leaves_a_conversation_already_due_later_alone(self, seeded):
        """Queued (on PostgreSQL, reply_due_at): waiting out a backoff or the LLM provider's
        pause, which a sweep must not cut short."""
        seeder, sweeper, runner = seeded
        waiting = await seeder.conversation(**old_inbound(ReplyState.pending))
        await seeder.set(waiting, reply_due_at=utcnow() + timedelta(minutes=1))

        assert await sweeper.sweep(grace_seconds=30) == 0

        assert runner.deferred == []

    async def test_leaves_a_conversation_a_worker_holds_alone(self, seeded):
        seeder, sweeper, runner = seeded
        held = await seeder.conversation(**outbound(MessageStatus.sending, 120))
        await seeder.set(held, lease_owner="w", lease_expires_at=utcnow() + timedelta(seconds=15))
        lapsed = await seeder.conversation(**outbound(MessageStatus.sending, 120))
        await seeder.set(lapsed, lease_owner="w", lease_expires_at=utcnow() - timedelta(seconds=1))

        assert await sweeper.sweep(grace_seconds=30) == 1

        assert runner.ids == {lapsed}


class TestRescue:
    async def test_a_rescue_does_not_cut_a_wait_short(self, start_runner):
        """The sweeper's rescue queues only what the runner has lost: a conversation waiting
        for its next run keeps its time."""
        handler = Recorder()
        runner = await start_runner(handler)
        await runner.defer(7, 60.0)

        assert await runner.rescue([7]) == 0
        assert await runner.rescue([8]) == 1

        await eventually(lambda: handler.calls == [8], "the rescued conversation's run")

    async def test_a_rescue_does_not_run_a_running_conversation_twice(self, start_runner):
        release = asyncio.Event()

        async def handler(conversation_id: int) -> None:
            await release.wait()

        runner = await start_runner(handler)
        await runner.defer(7)
        await eventually(lambda: not runner._waiting and 7 not in runner._due, "the run")

        assert await runner.rescue([7]) == 0
        release.set()


class Crashing:
    """A reply task that takes the conversation's lease, as replies/pipeline.py does, and then
    crashes (while `crashes` lasts), recording when each run began."""

    def __init__(self, locks: LeaseLocks, engine: Any, crashes: int, error: Exception) -> None:
        self.locks, self.engine = locks, engine
        self.crashes, self.error = crashes, error
        self.runs: list[tuple[int, float]] = []

    async def __call__(self, conversation_id: int) -> float | None:
        async with self.locks.lease(conversation_id) as lease:
            async with transaction(self.engine, durable=False) as connection:
                row = await lease.take(connection)
            self.runs.append((conversation_id, time.monotonic()))
            if row is None:
                return None if lease.parked else 0.05
            if self.crashes > 0:
                self.crashes -= 1
                raise self.error
            return None

    def times(self, conversation_id: int) -> list[float]:
        return [at for ran, at in self.runs if ran == conversation_id]


@pytest.fixture
def runner_log(monkeypatch) -> structlog.testing.LogCapture:
    """What jobs/runner.py logs, captured (and not rendered: a traceback each crash)."""
    capture = structlog.testing.LogCapture()
    monkeypatch.setattr(
        "platica.jobs.runner.log", structlog.wrap_logger(None, processors=[capture])
    )
    return capture


@pytest.fixture
async def parking(database_url, monkeypatch, runner_log):
    """A seeder, lease locks and the engine, with crash retries from 50 ms."""
    monkeypatch.setattr("platica.jobs.runner.CRASH_RETRY_SECONDS", 0.05)
    async with open_engine(database_url) as engine:
        sessionmaker = db.create_sessionmaker(engine)
        yield Seeder(sessionmaker), LeaseLocks(sessionmaker), engine


async def conversation_row(engine: Any, conversation_id: int) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT crash_count, parked_at, parked_error, reply_due_at, lease_owner"
                    " FROM conversations WHERE id = :id"
                ),
                {"id": conversation_id},
            )
        ).one()


class TestParking:
    async def test_a_conversation_that_keeps_crashing_is_parked(
        self, parking, start_runner, runner_log
    ):
        seeder, locks, engine = parking
        stuck = await seeder.conversation(**old_inbound(ReplyState.pending))
        fine = await seeder.conversation(**old_inbound(ReplyState.pending))
        handler = Crashing(locks, engine, 100, RuntimeError("boom for +34600111222"))
        runner = await start_runner(handler)

        await runner.defer(stuck)
        await eventually(
            lambda: conversation_row(engine, stuck), "it parked", holds=lambda row: row.parked_at
        )

        row = await conversation_row(engine, stuck)
        assert row.crash_count == PARK_AFTER_CRASHES
        assert row.lease_owner is None
        assert "RuntimeError: boom for" in row.parked_error
        assert "+34600111222" not in row.parked_error
        assert len(handler.times(stuck)) == PARK_AFTER_CRASHES
        # Retried with growing waits, not every few seconds for ever.
        times = handler.times(stuck)
        intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert intervals == sorted(intervals), intervals
        assert intervals[-1] >= 2 * intervals[0], intervals
        # Operators hear of it, at ERROR.
        [parked_event] = [e for e in runner_log.entries if e["event"] == "task.parked"]
        assert parked_event["log_level"] == "error"
        assert parked_event["conversation_id"] == stuck
        assert "+34600111222" not in parked_event["error"]
        # Run again (a new message, say), it does nothing and crashes no more.
        await runner.defer(stuck)
        await eventually(lambda: len(handler.times(stuck)) == PARK_AFTER_CRASHES + 1, "a run")
        assert (await conversation_row(engine, stuck)).crash_count == PARK_AFTER_CRASHES
        # The other conversations go on.
        handler.crashes = 0
        await runner.defer(fine)
        await eventually(lambda: bool(handler.times(fine)), "the other conversation's run")

    async def test_a_successful_run_resets_the_count(self, parking, start_runner):
        seeder, locks, engine = parking
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        handler = Crashing(locks, engine, 2, RuntimeError("boom"))
        runner = await start_runner(handler)

        await runner.defer(conversation)
        await eventually(lambda: len(handler.times(conversation)) == 3, "two crashes and a run")

        await eventually(
            lambda: conversation_row(engine, conversation),
            "the count reset",
            holds=lambda row: row.crash_count == 0 and row.lease_owner is None,
        )
        assert (await conversation_row(engine, conversation)).parked_at is None

    async def test_a_database_failure_is_not_the_conversations_crash(self, parking, start_runner):
        seeder, locks, engine = parking
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        error = psycopg.OperationalError("the connection was closed")
        handler = Crashing(locks, engine, PARK_AFTER_CRASHES + 1, error)
        runner = await start_runner(handler)

        await runner.defer(conversation)
        await eventually(
            lambda: len(handler.times(conversation)) == PARK_AFTER_CRASHES + 2, "every retry"
        )

        row = await conversation_row(engine, conversation)
        assert (row.crash_count, row.parked_at) == (0, None)

    async def test_a_parked_conversation_is_not_swept(self, parking):
        seeder, _locks, engine = parking
        parked = await seeder.conversation(**old_inbound(ReplyState.pending))
        await seeder.set(parked, parked_at=utcnow(), parked_error="boom", crash_count=5)
        runner = RecordingRunner()

        assert await Sweeper(db.create_sessionmaker(engine), runner).sweep(grace_seconds=0) == 0
        assert runner.deferred == []
