"""Leases taken and given back inside the caller's transactions (`Lease`), on a real database;
`hold()` is covered in test_runner.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import false, text

from platica import db
from platica.db import transaction
from platica.jobs.locks import LeaseLocks, LeaseLost, TaskCrashed
from platica.jobs.queue import release_statement, renew_statement
from platica.models import Conversation, MessageStatus, ReplyState, utcnow
from tests.jobs.test_runner import Seeder, ago, old_inbound
from tests.records import open_engine

NEVER = release_statement(false())


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[tuple[Seeder, LeaseLocks, Any]]:
    async with open_engine(database_url) as engine:
        sessionmaker = db.create_sessionmaker(engine)
        yield Seeder(sessionmaker), LeaseLocks(sessionmaker, lease_seconds=30), engine


async def owner_of(engine: Any, conversation_id: int) -> str | None:
    async with engine.connect() as connection:
        owner: str | None = (
            await connection.execute(
                text("SELECT lease_owner FROM conversations WHERE id = :id"),
                {"id": conversation_id},
            )
        ).scalar()
        return owner


class TestParked:
    async def test_a_parked_conversation_is_not_taken(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        await seeder.set(conversation, parked_at=utcnow(), parked_error="boom", crash_count=5)

        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                row = await lease.take(connection)
            assert row is None
            assert lease.parked
        assert await owner_of(engine, conversation) is None

    async def test_a_busy_conversation_is_not_called_parked(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with locks.lease(conversation) as first, locks.lease(conversation) as second:
            async with transaction(engine, durable=False) as connection:
                assert await first.take(connection) is not None
            async with transaction(engine, durable=False) as connection:
                assert await second.take(connection) is None
            assert not second.parked


class TestLease:
    async def test_take_returns_the_conversation_row(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                row = await lease.take(connection)
            assert row is not None
            assert (row.id, row.status) == (conversation, "active")
            assert await owner_of(engine, conversation) == lease.owner
        assert await owner_of(engine, conversation) is None

    async def test_a_taken_lease_refuses_a_second_taker(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with locks.lease(conversation) as first, locks.lease(conversation) as second:
            async with transaction(engine, durable=False) as connection:
                assert await first.take(connection) is not None
            async with transaction(engine, durable=False) as connection:
                assert await second.take(connection) is None
            assert await owner_of(engine, conversation) == first.owner

    async def test_released_in_the_callers_transaction_is_not_released_again(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))
        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                await lease.take(connection)
            async with transaction(engine, durable=False) as connection:
                assert await lease.release(connection) is True
            # Someone else's now: the end of the block must leave it alone.
            async with locks.lease(conversation) as other:
                async with transaction(engine, durable=False) as connection:
                    assert await other.take(connection) is not None
                assert await owner_of(engine, conversation) == other.owner

    async def test_a_release_whose_conditions_fail_leaves_it_to_the_end(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                await lease.take(connection)
                assert await lease.release(connection, NEVER) is False
            assert await owner_of(engine, conversation) == lease.owner
        assert await owner_of(engine, conversation) is None

    async def test_a_release_rolled_back_is_redone_at_the_end(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async def release_then_fail() -> None:
            async with locks.lease(conversation) as lease:
                async with transaction(engine, durable=False) as connection:
                    await lease.take(connection)
                async with transaction(engine, durable=False) as connection:
                    assert await lease.release(connection) is True
                    raise RuntimeError("the transaction fails after the release")

        # The crash goes on, counted on the conversation (TaskCrashed, caused by it).
        with pytest.raises(TaskCrashed) as crashed:
            await release_then_fail()
        assert isinstance(crashed.value.__cause__, RuntimeError)
        assert crashed.value.crashes == 1
        assert await owner_of(engine, conversation) is None

    async def test_renewing_a_lost_lease_raises(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(**old_inbound(ReplyState.pending))

        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                await lease.take(connection)
            async with db.session(db.create_sessionmaker(engine)) as session:
                stolen = await session.get(Conversation, conversation)
                assert stolen is not None
                stolen.lease_owner, stolen.lease_expires_at = "another-worker", ago(-30)
            with pytest.raises(LeaseLost):
                async with transaction(engine, durable=True) as connection:
                    await lease.take(connection)
        # Not this worker's any more: left alone.
        assert await owner_of(engine, conversation) == "another-worker"

    async def test_renew_statement_sets_more_columns(self, world):
        seeder, locks, engine = world
        conversation = await seeder.conversation(
            **{**old_inbound(ReplyState.answered), "status": MessageStatus.received}
        )
        closing = renew_statement(status="closed")

        async with locks.lease(conversation) as lease:
            async with transaction(engine, durable=False) as connection:
                await lease.take(connection)
            async with transaction(engine, durable=True) as connection:
                row = await lease.renew(connection, closing)
        assert row.status == "closed"
        assert row.id == conversation
