"""Transactions: the one way Plática runs statements, and where they commit.

Two forms of the same primitive, both committed when the block succeeds and rolled back when it
raises:

- `transaction(database, durable=…)`: a connection running SQLAlchemy Core statements, built
  once at import. The webhook's, the worker's and the queue's statements run here: on
  PostgreSQL through psycopg, on SQLite on the event loop's thread (engine.lend_sqlite), both
  compiled once per statement by SQLAlchemy's own dialect.
- `session(sessionmaker)`: an ORM session, for the API's, the dashboard's and the CLI's reads and
  occasional writes. Services flush, never commit: the block that opened the session commits.

Background work a transaction queued is woken only after it committed (`jobs.queue.woken`).

Durability. On PostgreSQL a plain COMMIT waits for its WAL to reach the disk (an fsync, about
1.5 ms here); `synchronous_commit = off` skips the wait, and a database crash may then forget
the last few such commits. That is harmless for a transaction whose work is redone from the
durable state before it: a lease (it lapses), an LLM attempt counter, a batch read, keyword
handling (the inbound message is still pending), a stored Twilio SID (the message stays
`sending` and is reconciled with Twilio before any retry). The WAL is written in order, so the
next durable commit makes every earlier one durable too. The commit that must be durable is the
one after which Twilio may be called: the message marked `sending` (and the reply stored with
it). SQLite runs synchronous=NORMAL (engine.py) either way.
"""

from __future__ import annotations

import collections
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

from platica.db.engine import DriverPool, lend_sqlite

_NOT_DURABLE = "SET LOCAL synchronous_commit = off"

R = TypeVar("R", bound=NamedTuple)


class Rows(Protocol):
    """What is read of a statement's result (SQLAlchemy's Result has it all)."""

    @property
    def rowcount(self) -> int: ...

    def first(self) -> Any: ...

    def scalar(self) -> Any: ...

    def scalar_one_or_none(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """A connection in a transaction, running SQLAlchemy Core statements."""

    @property
    def dialect_name(self) -> str: ...

    async def execute(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Rows: ...


class Typed(Generic[R]):
    """A statement whose rows come back as `row_type`: a NamedTuple naming its columns in order
    (checked when the statement is built, at import)."""

    __slots__ = ("row_type", "statement")

    def __init__(self, statement: Executable, row_type: type[R]) -> None:
        columns = tuple(cast(Any, statement).exported_columns.keys())
        if columns != row_type._fields:
            raise TypeError(f"{row_type.__name__} has {row_type._fields}, the statement {columns}")
        self.statement = statement
        self.row_type = row_type


async def fetch_all(tx: Tx, query: Typed[R], params: Mapping[str, Any] | None = None) -> list[R]:
    make = query.row_type._make
    return [make(row) for row in await tx.execute(query.statement, params)]


async def fetch_one(tx: Tx, query: Typed[R], params: Mapping[str, Any] | None = None) -> R | None:
    """The first row, or None."""
    row = (await tx.execute(query.statement, params)).first()
    return None if row is None else query.row_type._make(row)


@dataclass(frozen=True, slots=True)
class Database:
    """The process's database: its engine, ORM sessions and, on PostgreSQL, its psycopg pool."""

    sessionmaker: async_sessionmaker[AsyncSession]
    driver_pool: DriverPool | None = None

    @property
    def engine(self) -> AsyncEngine:
        engine = self.sessionmaker.kw["bind"]
        assert isinstance(engine, AsyncEngine)
        return engine

    def transaction(self, *, durable: bool) -> AbstractAsyncContextManager[Tx]:
        """See `transaction`."""
        return transaction(self.engine, durable=durable, driver_pool=self.driver_pool)

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """See `session`."""
        return session(self.sessionmaker)


@asynccontextmanager
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """An ORM session that commits when the block succeeds and rolls back when it raises."""
    async with sessionmaker() as opened:
        try:
            yield opened
        except BaseException:
            await opened.rollback()
            raise
        await opened.commit()


class Turns(Protocol):
    """What background work waits on before each transaction (jobs/turns.py)."""

    async def wait(self) -> None: ...


_turns: ContextVar[Turns | None] = ContextVar("platica_turns", default=None)


def take_turns(turns: Turns) -> None:
    """From now on, in the running task and the tasks it starts, each transaction waits for
    its turn first (`turns.wait()`): the in-process worker's tasks (jobs/runner.py)."""
    _turns.set(turns)


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, *, durable: bool, driver_pool: DriverPool | None = None
) -> AsyncIterator[Tx]:
    """A connection in a transaction, committed when the block succeeds (durably only when
    `durable`, see above) and rolled back when it raises.

    On PostgreSQL, given the process's psycopg pool (engine.open_driver_pool), the statements go
    to psycopg directly: SQLAlchemy's asyncio layer doubled what a transaction of the reply path
    cost the worker in CPU (a greenlet per call, and its execution machinery per statement).
    On SQLite they go to the sqlite3 connection directly, on the event loop's thread
    (engine.lend_sqlite): a statement through SQLAlchemy and aiosqlite cost 150 µs of CPU, and
    through sqlite3 a few (the statement itself).

    In a task that takes turns (`take_turns`), it first waits for its turn.
    """
    turns = _turns.get()
    if turns is not None:
        await turns.wait()
    if driver_pool is not None:
        async with driver_pool.connection() as driver, driver.transaction():
            if not durable:
                await driver.execute(_NOT_DURABLE)
            yield _PsycopgTx(driver)
        return
    if engine.dialect.name == "sqlite":
        async with lend_sqlite(engine) as lent:
            with _as_sqlalchemy_error("BEGIN IMMEDIATE"):
                await lent.execute_waiting("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(lent.connection)
            except BaseException:
                lent.connection.rollback()
                raise
            with _as_sqlalchemy_error("COMMIT"):
                await lent.execute_waiting("COMMIT")
        return
    async with engine.begin() as connection:
        if not durable and connection.dialect.name == "postgresql":
            await connection.exec_driver_sql(_NOT_DURABLE)
        yield _SqlAlchemyTx(connection)


async def execute_alone(
    driver_pool: DriverPool, statement: Executable, params: Mapping[str, Any] | None = None
) -> Rows:
    """One statement as its own transaction, on PostgreSQL's psycopg pool in autocommit: one
    round trip, where `transaction` adds BEGIN and COMMIT (the webhooks' statements)."""
    async with driver_pool.connection() as driver:
        return await _PsycopgTx(driver).execute(statement, params)


class _SqlAlchemyTx:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.dialect_name = connection.dialect.name

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        result: Rows = await self._connection.execute(statement, params)
        return result


# --- Statements compiled once by SQLAlchemy's own dialect, run by the driver ---------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]
    # SQLAlchemy's conversion of each parameter that has one (JSON, timestamps, arrays).
    processors: dict[str, Callable[[Any], Any]]
    # Columns whose value SQLAlchemy computes in Python when the statement runs without one
    # (`updated_at`'s onupdate, say).
    computed: dict[str, Callable[[], Any]]
    # SQLite: the list parameters (db.sql.any_of) spelled out in the SQL when it runs.
    expanding: frozenset[str] = frozenset()
    # SQLite: the rows' type, and SQLAlchemy's conversion of each column that has one (text to
    # timestamps, UUIDs and JSON; integers to booleans). psycopg converts on its own.
    row: type[tuple[Any, ...]] | None = None
    results: tuple[tuple[int, Callable[[Any], Any]], ...] = ()

    def values(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The statement's parameters, as the driver takes them."""
        values = {**self.defaults, **(params or {})}
        for name, compute in self.computed.items():
            if values.get(name) is None:
                values[name] = compute()
        for name, processor in self.processors.items():
            value = values.get(name)
            if value is not None:
                if name in self.expanding:
                    values[name] = [processor(item) for item in value]
                else:
                    values[name] = processor(value)
        return values


_PG_DIALECT = postgresql_psycopg.dialect()  # type: ignore[no-untyped-call]
# Named parameters (`:name`), which sqlite3 takes as a dict, as psycopg does.
_SQLITE_DIALECT = pysqlite.dialect(paramstyle="named")
_COMPILED: dict[tuple[int, str], tuple[Executable, _Compiled]] = {}


def _compiled(statement: Executable, dialect: Dialect) -> _Compiled:
    """The statement as the driver's SQL, compiled once (statements are built at import).

    On PostgreSQL lists are bound as arrays (db.sql.any_of), and an expanding IN, whose SQL
    depends on the list's length, is refused; on SQLite a list is spelled out when it runs.
    """
    key = (id(statement), dialect.name)
    cached = _COMPILED.get(key)
    if cached is not None and cached[0] is statement:
        return cached[1]
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    processors: dict[str, Callable[[Any], Any]] = {}
    expanding: set[str] = set()
    for name, bind in compiled.binds.items():
        if bind.expanding:
            if dialect.name == "postgresql":
                raise TypeError(f"{name}: an expanding IN; write it with db.sql.any_of")
            expanding.add(name)
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    computed: dict[str, Callable[[], Any]] = {}
    for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:
        default = column.onupdate if column in compiled.update_prefetch else column.default
        if default is None:
            continue
        arg: Any = getattr(default, "arg", None)
        if default.is_callable:
            # SQLAlchemy wraps the model's function in one that takes the execution context.
            computed[column.key] = functools.partial(arg, None)
        elif default.is_scalar:
            computed[column.key] = functools.partial(lambda value: value, arg)
    row, results = _rows(compiled, dialect) if dialect.name == "sqlite" else (None, ())
    result = _Compiled(
        compiled.string,
        dict(compiled.params),
        processors,
        computed,
        frozenset(expanding),
        row,
        results,
    )
    _COMPILED[key] = (statement, result)
    return result


def _rows(
    compiled: SQLCompiler, dialect: Dialect
) -> tuple[type[tuple[Any, ...]] | None, tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """The type of the rows the statement returns, named by its columns as SQLAlchemy names
    them, and the conversion of each column that has one."""
    columns = compiled._result_columns
    if not columns:
        return None, ()
    names = [column.keyname for column in columns]
    row = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
    results = []
    for index, column in enumerate(columns):
        convert = column.type._cached_result_processor(dialect, None)
        if convert is not None:
            results.append((index, convert))
    return row, tuple(results)


@dataclass(slots=True)
class _ListRows:
    rows: list[Any]
    rowcount: int

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise ValueError(f"{len(self.rows)} rows where at most one was expected")
        return self.scalar()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


# --- PostgreSQL through psycopg ----------------------------------------------------------------


class _PsycopgTx:
    dialect_name = "postgresql"

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        compiled = _compiled(statement, _PG_DIALECT)
        async with self._connection.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(compiled.sql, compiled.values(params))
            rows = await cursor.fetchall() if cursor.description else []
            return _ListRows(rows, cursor.rowcount)


# --- SQLite through sqlite3, on the event loop's thread ------------------------------------------


class _SqliteTx:
    """Statements run at once: each takes SQLite microseconds (engine.lend_sqlite)."""

    dialect_name = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        compiled = _compiled(statement, _SQLITE_DIALECT)
        sql, values = compiled.sql, compiled.values(params)
        for name in compiled.expanding:
            items = values.pop(name)
            names = [f"{name}_{index}" for index in range(len(items))]
            values.update(zip(names, items, strict=True))
            # An empty list matches nothing, as SQLAlchemy's own expansion does.
            listed = ", ".join(f":{n}" for n in names) or "SELECT NULL WHERE 0"
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", listed)
        with _as_sqlalchemy_error(sql):
            cursor = self._connection.execute(sql, values)
            rows = cursor.fetchall() if cursor.description else []
        if compiled.row is not None:
            make = compiled.row._make  # type: ignore[attr-defined]
            if compiled.results:
                rows = [make(_converted(row, compiled.results)) for row in rows]
            else:
                rows = [make(row) for row in rows]
        return _ListRows(rows, cursor.rowcount)


@contextmanager
def _as_sqlalchemy_error(sql: str) -> Iterator[None]:
    """sqlite3's errors raised as SQLAlchemy raises them (IntegrityError, OperationalError...),
    as callers catch them whichever way the statement ran; parameters never shown."""
    try:
        yield
    except sqlite3.Error as error:
        raise DBAPIError.instance(
            sql, None, error, sqlite3.Error, hide_parameters=True, dialect=_SQLITE_DIALECT
        ) from error


def _converted(
    row: tuple[Any, ...], results: tuple[tuple[int, Callable[[Any], Any]], ...]
) -> list[Any]:
    values = list(row)
    for index, convert in results:
        values[index] = convert(values[index])
    return values
