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
from platica.app import start_services, stop_services
from tests.conftest import make_settings

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


@pytest.mark.postgres
class TestDriverPoolAfterRestart:
    async def test_the_first_connection_handed_out_works(self, postgres_url):
        """A restart kills every pooled connection: the first one found dead has the pool test
        and replace all the idle ones at once (psycopg's pool alone would try them one by one,
        1 s, 2 s... apart, and could hand out one used too recently to be pinged)."""
        pool = await db.open_driver_pool(postgres_url)
        try:
            await pool.wait(timeout=10)
            async with pool.connection() as connection:
                await connection.execute("SELECT 1")  # used just now: not pinged next time
            conninfo = db.conninfo(postgres_url)
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

            async with pool.connection() as connection:
                cursor = await connection.execute("SELECT 1")
                assert await cursor.fetchone() == {"?column?": 1}
        finally:
            await pool.close()


@pytest.mark.postgres
class TestDriverPool:
    async def test_every_connection_is_open_before_the_first_request(self, postgres_url):
        """Opening a connection under load (a server process, authentication, statements
        prepared) stalls the webhooks around it: the pool opens all of its connections at
        start-up, and keeps them however long they stay idle."""
        pool = await db.open_driver_pool(postgres_url)
        try:
            await pool.wait(timeout=10)
            assert pool.get_stats()["pool_size"] == db.engine.DRIVER_POOL_SIZE
            assert pool.min_size == pool.max_size == db.engine.DRIVER_POOL_SIZE
        finally:
            await pool.close()


@pytest.mark.postgres
class TestApplicationName:
    """Plática's connections are named "platica" in pg_stat_activity (`platica doctor` counts
    the other clients' apart), unless DATABASE_URL names its own application_name."""

    async def test_both_pools_name_their_connections(self, postgres_url: str) -> None:
        engine = db.create_engine(postgres_url)
        pool = await db.open_driver_pool(postgres_url, size=1)
        try:
            async with engine.connect() as connection:
                name = await connection.scalar(text("SELECT current_setting('application_name')"))
            async with pool.connection() as driver_connection:
                cursor = await driver_connection.execute(
                    "SELECT current_setting('application_name') AS name"
                )
                row = await cursor.fetchone()
        finally:
            await pool.close()
            await engine.dispose()
        assert name == "platica"
        assert row == {"name": "platica"}

    async def test_database_url_names_its_own(self, postgres_url: str) -> None:
        engine = db.create_engine(postgres_url + "?application_name=panaderia")
        try:
            async with engine.connect() as connection:
                name = await connection.scalar(text("SELECT current_setting('application_name')"))
        finally:
            await engine.dispose()
        assert name == "panaderia"


@pytest.mark.postgres
class TestPoolSize:
    async def test_a_process_holds_database_pool_size_connections_per_pool(self, postgres_url):
        """DATABASE_POOL_SIZE sizes both pools of a process (to fit a hosted database's cap);
        the message path's connections are all open once the process has started."""
        settings = make_settings(postgres_url, DATABASE_POOL_SIZE=3)
        state = await start_services(settings, work=False)
        try:
            pool = state.driver_pool
            assert pool is not None
            await pool.wait(timeout=10)
            assert pool.get_stats()["pool_size"] == 3
            assert state.engine.pool.size() == 3  # type: ignore[attr-defined]  # QueuePool's
        finally:
            await stop_services(state)


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
