"""Engines and connection pools for SQLite and PostgreSQL, and ORM sessionmakers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
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
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

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


# How long a statement waits for another process's write lock (`platica accounts create`, say)
# before it fails with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


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
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(sync_engine.pool, "reset")
    def _on_reset(dbapi_connection: Any, _record: Any, _state: Any) -> None:
        # A connection given back in a transaction is rolled back (SQLAlchemy's own reset, which
        # this replaces, would send the ROLLBACK through aiosqlite's thread even when there is
        # no transaction, as after every transaction of `lend_sqlite`).
        connection = _sqlite3(dbapi_connection)
        if connection.in_transaction:
            connection.rollback()


def _sqlite3(dbapi_connection: Any) -> sqlite3.Connection:
    """The sqlite3 connection under SQLAlchemy's adapter of aiosqlite's (which keeps it as
    `_conn`, as SQLAlchemy's own adapter reads it)."""
    connection: sqlite3.Connection = dbapi_connection.driver_connection._conn
    return connection


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock (SQLITE_BUSY)."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


class LentSqlite:
    """The process's one SQLite connection, lent by the engine's pool, used directly on the
    event loop's thread (see `lend_sqlite`). While lent it has no busy timeout: a statement
    that finds another process holding the write lock fails at once, rather than block the
    event loop (`execute_waiting` then waits elsewhere)."""

    def __init__(self, proxied: PoolProxiedConnection) -> None:
        self._proxied = proxied
        self.connection = _sqlite3(proxied.dbapi_connection)

    async def execute_waiting(self, sql: str) -> None:
        """Run `sql` (BEGIN IMMEDIATE, COMMIT) at once, or, when another process holds the
        write lock, in aiosqlite's thread, waiting for it up to the busy timeout."""
        try:
            self.connection.execute(sql)
            return
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
        waiting = asyncio.ensure_future(self._wait_in_thread(sql))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread goes on with the statement: the connection is not given back (and
            # used on this thread) before it is done.
            while not waiting.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([waiting])
            if not waiting.cancelled():
                waiting.exception()  # retrieved: the cancellation is what propagates
            raise

    async def _wait_in_thread(self, sql: str) -> None:
        driver = self._proxied.driver_connection
        assert driver is not None
        await driver.execute_fetchall(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        try:
            await driver.execute_fetchall(sql)
        finally:
            await driver.execute_fetchall("PRAGMA busy_timeout=0")


@asynccontextmanager
async def lend_sqlite(engine: AsyncEngine) -> AsyncIterator[LentSqlite]:
    """The engine's one SQLite connection, for the statements every message runs: taken from
    its pool (waiting while an ORM session has it, which waits while this has it), used on the
    event loop's thread, given back.

    aiosqlite runs each call in a thread of its own: two thread switches per statement, which
    cost far more than the statement (tens of microseconds against a few), and under load
    each waits for the GIL, up to the interpreter's switch interval (5 ms) while the event loop
    is busy. SQLAlchemy's own execution adds a greenlet and its machinery per statement
    (db/tx.py's `_SqliteTx` skips those too).
    """
    proxied: PoolProxiedConnection = await greenlet_spawn(engine.sync_engine.pool.connect)
    lent = LentSqlite(proxied)
    lent.connection.execute("PRAGMA busy_timeout=0")
    try:
        yield lent
    finally:
        # The ORM's statements, in aiosqlite's thread, wait for other processes as before.
        lent.connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Given back without a round trip: the pool's reset is _configure_sqlite's _on_reset.
        proxied.close()


# Connections per process on PostgreSQL: all kept open once made (no overflow), because opening
# one costs the server a process and both sides several milliseconds of CPU, and under load a
# pool that opens and closes its overflow connections does that many times a second. Past
# this, callers queue for a connection instead of piling more work onto the database.
POOL_SIZE = 20
# What Plática's connections call themselves in pg_stat_activity, unless DATABASE_URL names
# another application_name: an operator sees which connections are Plática's, and
# `platica doctor` leaves them out of what other clients hold.
APPLICATION_NAME = "platica"
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
            full,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            pool_reset_on_return=None,  # see _configure_sqlite's _on_reset
            hide_parameters=True,
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
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "fallback_application_name": APPLICATION_NAME,
        },
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

# Connections of the psycopg pool (open_driver_pool): all opened at start-up and kept. Opened
# as a burst needed them instead, each new one (a server process forked, authenticated, its
# statements prepared) stalled the webhooks around it: at 300 webhooks/s on the 2-core bench
# machine, the one-account load opened 11-15 connections and its ack p99 was 47-210 ms; with
# the pools full from the start it opened none and the p99 was 19-43 ms.
DRIVER_POOL_SIZE = 20


# A `platica serve` and its worker child: two processes with two pools each, and besides them
# the worker's LISTEN connection.
POOLS_PER_SERVE = 2 * 2


def connections_at_most(pool_size: int) -> int:
    """The connections one `platica serve` and its worker child may hold with DATABASE_POOL_SIZE
    `pool_size`."""
    return POOLS_PER_SERVE * pool_size + 1


def pool_size_within(connections: int) -> int:
    """The largest DATABASE_POOL_SIZE whose connections_at_most fits in `connections` (0 if
    none does)."""
    return max(0, (connections - 1) // POOLS_PER_SERVE)


def conninfo(url: str) -> str:
    """libpq's connection string for DATABASE_URL (whatever its driver name) as Plática's
    connections made without SQLAlchemy use it: named APPLICATION_NAME unless the URL names
    its own application_name."""
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return make_conninfo(plain, fallback_application_name=APPLICATION_NAME)


# What Plática's own connections declare (see _declare_service).
SERVICE_SETTING = "SET platica.service = 'on'"


async def _prepare_connection(connection: psycopg.AsyncConnection[Any]) -> None:
    """Run on each new connection of the webhook's pool (autocommit: it takes effect at once)."""
    await connection.execute(SERVICE_SETTING)


async def open_driver_pool(url: str, *, size: int = DRIVER_POOL_SIZE) -> DriverPool:
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
            try:
                await connection.execute("SELECT 1")
            except psycopg.OperationalError:
                # A restart closed it, and its idle siblings too. The pool would try those one
                # at a time, waiting longer before each (1 s, 2 s...: a full pool outlasts the
                # request's timeout): they are all tested and replaced at once instead.
                await pool.check()
                raise  # the pool takes another connection (a new one, once opened)

    async def given_back(connection: psycopg.AsyncConnection[Any]) -> None:
        idle_since[connection] = time.monotonic()

    pool: DriverPool = AsyncConnectionPool(
        conninfo(url),
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
        # Every connection opened before the first burst and never closed for being idle (see
        # DRIVER_POOL_SIZE): the pool never shrinks below min_size.
        min_size=size,
        max_size=size,
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
