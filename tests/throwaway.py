"""Throwaway PostgreSQL databases for tests that migrate, downgrade or drop their database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE, disconnecting whoever is still connected to it."""
    with psycopg.connect(_dsn(server_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """An empty database on the server of `server_url` (unmigrated), always dropped afterwards.

    `server_url` is any database on the server (the session's test database will do):
    CREATE DATABASE and DROP DATABASE work from any of them.
    """
    name = f"platica_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_dsn(server_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(server_url, name)
