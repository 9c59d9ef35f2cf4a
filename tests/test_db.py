"""The engines: on PostgreSQL, connections idle for a while are pinged before use, and handed
out as they were given back; on both databases, errors never show the statement's values."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from platica import db

NUMBER = "+14155238886"


@pytest.fixture
async def engine(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AsyncEngine]:
    # Every connection counts as idle for long: each checkout pings it first.
    monkeypatch.setattr(db.engine, "PING_IDLE_SECONDS", -1.0)
    created = db.create_engine(postgres_url)
    yield created
    await created.dispose()


@pytest.mark.postgres
class TestIdlePing:
    async def test_a_pinged_connection_is_handed_out_outside_a_transaction(self, engine):
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # What the webhook's statement does with its connection.
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            assert await connection.scalar(text("SELECT 2")) == 2

    async def test_a_connection_the_server_dropped_while_idle_is_replaced(
        self, engine, postgres_url
    ):
        async with engine.connect() as connection:
            backend = await connection.scalar(text("SELECT pg_backend_pid()"))
        # What a database restart does to the pool's idle connection.
        conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (backend,))

        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT pg_backend_pid()")) != backend


class TestHiddenParameters:
    """Item 16 of issue 12: a failed statement's error (logged, reported to Sentry) carries
    no bound values: phone numbers, message bodies."""

    async def test_an_error_does_not_show_the_bound_values(self, database_url):
        engine = db.create_engine(database_url)
        try:
            async with engine.connect() as connection:
                with pytest.raises(DBAPIError) as caught:
                    await connection.execute(
                        text("SELECT no_such_column FROM messages WHERE body = :body"),
                        {"body": NUMBER},
                    )
        finally:
            await engine.dispose()
        assert "no_such_column" in str(caught.value)
        assert NUMBER not in str(caught.value)
