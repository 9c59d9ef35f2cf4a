"""Engines and connection pools for SQLite and PostgreSQL, and ORM sessionmakers."""

from __future__ import annotations

import time
import weakref
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

DriverPool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]


def async_url(url: str) -> str:
    """The URL with an async driver: psycopg (v3) for PostgreSQL, aiosqlite for SQLite."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The URL with a blocking driver, for Alembic."""
    parsed = make_url(async_url(url))
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(sync_engine: Any) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE.

    SQLite's default deferred transactions can fail with "database is locked" when a reader
    later writes; taking the write lock up front makes concurrent writers wait instead.
    """

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# Connections per process on PostgreSQL: all kept open once made (no overflow), because opening
# one costs the server a process and both sides several milliseconds of CPU, and under load a
# pool that opens and closes its overflow connections does that many times a second. Past
# this, callers queue for a connection instead of piling more work onto the database.
POOL_SIZE = 20
# While the database is down, how long a caller waits for a connection (from the pool, or a new
# one) before it fails: Twilio gives a webhook 15 s, and a quick 503 beats a late 500. The
# webhook's write retries once on a lost connection, so twice this stays under Twilio's limit.
POOL_TIMEOUT_SECONDS = 4.0
# libpq's connect_timeout (whole seconds, at least 2): a server that does not answer at all.
CONNECT_TIMEOUT_SECONDS = 2


def create_engine(url: str, *, pool_size: int = POOL_SIZE) -> AsyncEngine:
    """An async engine for DATABASE_URL. Its errors never show a statement's bound values
    (`hide_parameters`): they are phone numbers and message bodies, and errors get logged."""
    full = async_url(url)
    if make_url(full).get_backend_name() == "sqlite":
        # One writer at a time is all SQLite allows; queueing in the pool is fairer than
        # several connections spinning on the file lock.
        engine = create_async_engine(
            full, pool_size=1, max_overflow=0, pool_timeout=60, hide_parameters=True
        )
        _configure_sqlite(engine.sync_engine)
        return engine
    # psycopg prepares a statement on the server once a connection has run it five times (its
    # default), so the hot statements are planned once per connection, not on every call
    # (planning the webhook's statement costs the server more than running it). A direct or
    # session-pooler connection keeps them; a transaction pooler would not (README).
    # Last in, first out: under light load the same few connections do all the work (their
    # statements prepared, no ping after an idle spell) and the rest stay idle.
    engine = create_async_engine(
        full,
        pool_size=pool_size,
        max_overflow=0,
        pool_use_lifo=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        hide_parameters=True,
    )
    _declare_service(engine.sync_engine)
    _ping_when_idle(engine.sync_engine)
    return engine


# A connection back in use within this many seconds is not pinged first (see _ping_when_idle).
PING_IDLE_SECONDS = 5.0


def _ping_when_idle(sync_engine: Any) -> None:
    """Ping a pooled connection before use only when it has been idle for a while.

    SQLAlchemy's pool_pre_ping would cost a round trip per transaction; a connection used a
    moment ago is alive unless the server restarted in that moment, and the webhook's write
    retries once on a dropped connection for that case (channels/inbound.py).
    """

    @event.listens_for(sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            # The ping began a transaction: end it, so the connection is handed out as it was
            # given back (psycopg refuses to switch a connection in a transaction to autocommit,
            # which the webhook's statement does).
            dbapi_connection.rollback()
        except Exception as error:
            # The pool discards this connection and checks out another (or a new one).
            raise exc.DisconnectionError(str(error)) from error


# --- PostgreSQL without SQLAlchemy: the statements every message runs -------------------------

# Connections of the psycopg pool (open_driver_pool): kept open, and at most.
DRIVER_POOL_MIN_SIZE = 4
DRIVER_POOL_SIZE = 20
# What Plática's own connections declare (see _declare_service).
SERVICE_SETTING = "SET platica.service = 'on'"


async def _prepare_connection(connection: psycopg.AsyncConnection[Any]) -> None:
    """Run on each new connection of the webhook's pool (autocommit: it takes effect at once)."""
    await connection.execute(SERVICE_SETTING)


async def open_driver_pool(url: str, *, max_size: int = DRIVER_POOL_SIZE) -> DriverPool:
    """Plain psycopg connections, in autocommit, for the statements every message runs: the
    webhook's and the status callback's, and the reply path's (replies/store.py).

    SQLAlchemy's asyncio layer runs each call (checkout, execute, checkin) in a greenlet of its
    own, whose frame stack is mapped and unmapped every time, and it doubled what a transaction
    of the reply path cost in CPU. Like the engine's pool, this one pings a connection only
    when it has been idle for a while (a server restart drops it).
    """
    idle_since: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
        weakref.WeakKeyDictionary()
    )

    async def check(connection: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - idle_since.get(connection, 0.0) >= PING_IDLE_SECONDS:
            await connection.execute("SELECT 1")  # raising: the pool takes another connection

    async def given_back(connection: psycopg.AsyncConnection[Any]) -> None:
        idle_since[connection] = time.monotonic()

    pool: DriverPool = AsyncConnectionPool(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            # UTC, as SQLAlchemy's UTCDateTime hands timestamps out.
            "options": "-c TimeZone=UTC",
            # Prepared at their first use: this pool only runs the handful of statements every
            # message runs (a new connection would otherwise plan each one five times first).
            "prepare_threshold": 0,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        },
        timeout=POOL_TIMEOUT_SECONDS,
        # A few ready before the first burst (opening one costs several milliseconds).
        min_size=DRIVER_POOL_MIN_SIZE,
        max_size=max_size,
        configure=_prepare_connection,
        check=check,
        reset=given_back,
        name="platica",
        open=False,
    )
    await pool.open()
    return pool


def _declare_service(sync_engine: Any) -> None:
    """Plática's own connections are the service: row-level security (revision 0003) shows
    them every account's rows, unless a transaction names an account (`platica.account_id`,
    set by the API for an account's callers), which wins.

    Matters only when connecting as a role that does not own the tables (see 0003).
    """

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(SERVICE_SETTING)
        cursor.close()
        # Committed, or the pool's rollback on return would undo the SET.
        dbapi_connection.commit()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
