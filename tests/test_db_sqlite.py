"""db.transaction on SQLite: the engine's one connection used on the event loop's thread
(db.engine.lend_sqlite), which must never make the event loop wait for another process."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from platica import db
from platica.models import Account


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(sqlite_url)
    yield engine
    await engine.dispose()


def sqlite_path(engine: AsyncEngine) -> str:
    database = engine.url.database
    assert database is not None
    return database


_ID = Account.__table__.c.id
_ACCOUNTS = sa.select(sa.func.count()).select_from(Account)
_ADD = sa.insert(Account).values(id=sa.bindparam("id"), name=sa.bindparam("name"))


class TestSqliteTransaction:
    async def test_another_processs_write_lock_is_waited_for_off_the_event_loop(self, engine):
        other = sqlite3.connect(sqlite_path(engine), isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO accounts (id, name, created_at) VALUES ('a', 'x', '2026')")
        turns = 0

        async def write() -> int:
            async with db.transaction(engine, durable=True) as tx:
                return int((await tx.execute(_ACCOUNTS)).scalar())

        writing = asyncio.create_task(write())
        # While it waits for the lock, the event loop goes on.
        while turns < 50:
            await asyncio.sleep(0)
            turns += 1
        assert not writing.done()

        other.execute("COMMIT")
        other.close()
        assert await asyncio.wait_for(writing, 30) == 1

    async def test_the_orm_waits_while_the_connection_is_lent_and_sees_the_commit(self, engine):
        sessionmaker = db.create_sessionmaker(engine)
        async with db.transaction(engine, durable=True) as tx:
            await tx.execute(_ADD, {"id": uuid.uuid4(), "name": "Panadería"})
            reading = asyncio.create_task(_count_with_orm(sessionmaker))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not reading.done()
        assert await asyncio.wait_for(reading, 30) == 1

    async def test_errors_are_sqlalchemys_and_the_transaction_is_rolled_back(self, engine):
        account_id = uuid.uuid4()

        async def add_twice() -> None:
            async with db.transaction(engine, durable=True) as tx:
                await tx.execute(_ADD, {"id": account_id, "name": "uno"})
                await tx.execute(_ADD, {"id": account_id, "name": "dos"})

        with pytest.raises(IntegrityError):
            await add_twice()
        async with db.transaction(engine, durable=True) as tx:
            assert (await tx.execute(_ACCOUNTS)).scalar() == 0

    async def test_rows_come_back_converted_as_sqlalchemy_converts_them(self, engine):
        account_id = uuid.uuid4()
        async with db.transaction(engine, durable=True) as tx:
            await tx.execute(_ADD, {"id": account_id, "name": "Panadería"})
            row = (
                await tx.execute(
                    sa.select(Account.id, Account.created_at).where(db.any_of(_ID, "ids")),
                    {"ids": [account_id]},
                )
            ).first()
            empty = list(
                await tx.execute(sa.select(Account.id).where(db.any_of(_ID, "ids")), {"ids": []})
            )
        assert row.id == account_id
        assert row.created_at.tzinfo is not None
        assert empty == []


async def _count_with_orm(sessionmaker: Any) -> int:
    async with db.session(sessionmaker) as session:
        return int(await session.scalar(_ACCOUNTS) or 0)
