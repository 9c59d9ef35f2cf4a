"""The schema's declarative base, and what statements need beyond SQLAlchemy Core itself: a
string written into the SQL, an insert that ignores a conflict, and a list parameter that
PostgreSQL takes as one array (`any_of`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ARRAY, MetaData, String, bindparam, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Boolean

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def constant(value: str) -> ColumnElement[str]:
    """A string written into the SQL itself, not bound as a parameter.

    An ON CONFLICT's index predicate must be one: PostgreSQL matches it to a partial unique index
    when it plans the statement, and a prepared statement can be planned without its parameters'
    values ("no unique or exclusion constraint matching the ON CONFLICT specification").
    """
    return literal_column("'" + value.replace("'", "''") + "'", String)


def one_of(column: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """`column IN ('a', 'b')` with the values written into the SQL (fixed lists of enum values:
    a partial index's predicate can match them when the statement is planned)."""
    return column.in_([constant(value) for value in values])


def none_of(column: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """`column NOT IN ('a', 'b')`, the values written into the SQL (see one_of)."""
    return column.not_in([constant(value) for value in values])


def dialect_insert(dialect: str, table: Any) -> Any:
    """INSERT for `dialect` ("postgresql" or "sqlite"), with its ON CONFLICT clauses."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)


def insert_ignore(
    dialect: str,
    table: Any,
    values: Mapping[str, Any],
    *,
    index_elements: list[Any],
    index_where: ColumnElement[bool] | None = None,
) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for `dialect` (PostgreSQL or SQLite)."""
    return (
        dialect_insert(dialect, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=index_elements, index_where=index_where)
    )


class any_of(FunctionElement[bool]):
    """`column` is one of the list given as the parameter `name` when the statement runs.

    PostgreSQL gets `column = ANY(:name)`, the list bound as one array, so the statement is the
    same whatever the list's length (psycopg can prepare it); other databases get Core's own
    `column IN (…)`, expanded by SQLAlchemy.
    """

    type = Boolean()
    inherit_cache = True
    name = "any_of"

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        super().__init__(column, bindparam(name, type_=ARRAY(column.type)))


@compiles(any_of, "postgresql")
def _any_of_postgresql(element: any_of, compiler: SQLCompiler, **kw: Any) -> str:
    column, array = element.clauses
    return f"{compiler.process(column, **kw)} = ANY({compiler.process(array, **kw)})"


@compiles(any_of)
def _any_of_expanding(element: any_of, compiler: SQLCompiler, **kw: Any) -> str:
    column, array = element.clauses
    listed = bindparam(array.key, expanding=True, type_=column.type)
    return compiler.process(column.in_(listed), **kw)
