"""Checking PostgreSQL's generic plan for a statement: what a prepared statement runs after its
first few executions, planned once for any parameters, and kept as the tables grow."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

TABLE_SCAN = re.compile(r"(Seq Scan|Index Scan using \S+|Index Only Scan using \S+) on (\w+)")


def compiled(statement: str | ClauseElement) -> tuple[str, dict[str, Any]]:
    """A statement as SQL with psycopg's %(name)s placeholders, and its own parameter values
    (the constants of a SQLAlchemy statement, IN lists expanded)."""
    if isinstance(statement, str):
        return statement, {}
    result = statement.compile(dialect=postgresql.dialect())
    # An IN list, expanded when executed, plans as the array comparison PostgreSQL makes of it.
    text = re.sub(r"NOT IN \(__\[POSTCOMPILE_(\w+)\]\)", r"<> ALL(%(\1)s)", str(result))
    text = re.sub(r"IN \(__\[POSTCOMPILE_(\w+)\]\)", r"= ANY(%(\1)s)", text)
    return text, dict(result.params)


def generic_plan(conninfo: str, statement: str | ClauseElement, params: Mapping[str, Any]) -> str:
    """EXPLAIN of the statement's generic plan (PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN))."""
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text, constants = compiled(statement)
    params = {**constants, **params}
    sql = re.sub(r"%\((\w+)\)s", positional, text)
    with psycopg.connect(conninfo) as connection:
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute(f"PREPARE checked AS {sql}")
        arguments = psycopg.ClientCursor(connection).mogrify(
            ", ".join(["%s"] * len(names)), [params[name] for name in names]
        )
        rows = connection.execute(f"EXPLAIN EXECUTE checked({arguments})").fetchall()
        connection.rollback()  # EXPLAIN without ANALYZE runs nothing; nothing to keep either
    return "\n".join(row[0] for row in rows)


def unbounded_scans(plan: str) -> list[str]:
    """The plan's table accesses that are not lookups: sequential scans, and index scans with no
    index condition (a walk through the whole index). Their cost grows with the table."""
    lines = plan.splitlines()
    found = []
    for number, line in enumerate(lines):
        match = TABLE_SCAN.search(line)
        if match is None:
            continue
        if match.group(1) == "Seq Scan":
            found.append(line.strip())
            continue
        depth = len(line) - len(line.lstrip())
        details = []
        for following in lines[number + 1 :]:
            if len(following) - len(following.lstrip()) <= depth or "->" in following:
                break
            details.append(following.strip())
        if not any(detail.startswith("Index Cond:") for detail in details):
            found.append(line.strip())
    return found
