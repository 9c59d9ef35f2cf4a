"""Transactions: the one way Plática runs statements, and where they commit.

Two forms of the same primitive, both committed when the block succeeds and rolled back when it
raises:

- `transaction(database, durable=…)`: a connection running SQLAlchemy Core statements, built
  once at import. The webhook's, the worker's and the queue's statements run here.
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

import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

from platica.db.engine import DriverPool

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


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, *, durable: bool, driver_pool: DriverPool | None = None
) -> AsyncIterator[Tx]:
    """A connection in a transaction, committed when the block succeeds (durably only when
    `durable`, see above) and rolled back when it raises.

    On PostgreSQL, given the process's psycopg pool (engine.open_driver_pool), the statements go
    to psycopg directly: SQLAlchemy's asyncio layer doubled what a transaction of the reply path
    cost the worker in CPU (a greenlet per call, and its execution machinery per statement).
    """
    if driver_pool is not None:
        async with driver_pool.connection() as driver, driver.transaction():
            if not durable:
                await driver.execute(_NOT_DURABLE)
            yield _PsycopgTx(driver)
        return
    async with engine.begin() as connection:
        if not durable and connection.dialect.name == "postgresql":
            await connection.exec_driver_sql(_NOT_DURABLE)
        yield _SqlAlchemyTx(connection)


class _SqlAlchemyTx:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.dialect_name = connection.dialect.name

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        result: Rows = await self._connection.execute(statement, params)
        return result


# --- PostgreSQL through psycopg: a statement compiled once by SQLAlchemy's own dialect --------


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]
    # SQLAlchemy's conversion of each parameter that has one (JSON, timestamps, arrays).
    processors: dict[str, Callable[[Any], Any]]
    # Columns whose value SQLAlchemy computes in Python when the statement runs without one
    # (`updated_at`'s onupdate, say).
    computed: dict[str, Callable[[], Any]]


_PG_DIALECT = postgresql_psycopg.dialect()  # type: ignore[no-untyped-call]
_COMPILED: dict[int, tuple[Executable, _Compiled]] = {}


def _compiled(statement: Executable) -> _Compiled:
    """The statement as psycopg's SQL, compiled once (statements are built at import).

    Lists are bound as arrays (db.sql.any_of); an expanding IN, whose SQL depends on the list's
    length, is refused.
    """
    cached = _COMPILED.get(id(statement))
    if cached is not None and cached[0] is statement:
        return cached[1]
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=_PG_DIALECT))
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        if bind.expanding:
            raise TypeError(f"{name}: an expanding IN; write it with db.sql.any_of")
        processor = bind.type.dialect_impl(_PG_DIALECT).bind_processor(_PG_DIALECT)
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
    result = _Compiled(compiled.string, dict(compiled.params), processors, computed)
    _COMPILED[id(statement)] = (statement, result)
    return result


@dataclass(slots=True)
class _PsycopgRows:
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


class _PsycopgTx:
    dialect_name = "postgresql"

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Rows:
        compiled = _compiled(statement)
        values = {**compiled.defaults, **(params or {})}
        for name, compute in compiled.computed.items():
            if values.get(name) is None:
                values[name] = compute()
        for name, processor in compiled.processors.items():
            if values.get(name) is not None:
                values[name] = processor(values[name])
        async with self._connection.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(compiled.sql, values)
            rows = await cursor.fetchall() if cursor.description else []
            return _PsycopgRows(rows, cursor.rowcount)
