"""Shared fixtures: real databases (SQLite files, a throwaway PostgreSQL database) and live servers."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Self

import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import make_url

from platica import db
from platica.app import create_app
from platica.config import Settings, load_settings
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, WHATSAPP_NUMBER

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SETTINGS_VARIABLES = list(Settings.model_fields)
# Connections per pool of every process a test starts (see _clean_environment).
TEST_POOL_SIZE = 5
# Every table of Plática's, dependents first: truncate_all empties them, test_migrations and
# test_rls check each.
TABLES = (
    "idempotency_keys",
    "broadcast_recipients",
    "broadcasts",
    "templates",
    "dashboard_sessions",
    "webhook_logs",
    "media",
    "messages",
    "conversations",
    "contacts",
    "channel_configs",
    "api_keys",
    "accounts",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Neither the developer's environment nor a .env file leaks into a test. Every process a
    test starts (in-process servers, `platica serve` and its worker) holds TEST_POOL_SIZE
    connections per pool, not the default's 20 opened at start-up: the suite's multi-server
    cases must fit PostgreSQL's max_connections (100 by default) with room to spare."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_POOL_SIZE", str(TEST_POOL_SIZE))
    monkeypatch.chdir(tmp_path)
    from platica.config import get_settings

    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _strictest_prepared_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PostgreSQL engine made in a test prepares each statement at its first use and has
    PostgreSQL plan it once for any parameters (a generic plan). Production prepares a statement
    after five uses, and PostgreSQL may then switch to a generic plan: a statement that only
    works with its parameters' values at hand (say, an ON CONFLICT whose index predicate is a
    parameter) fails here at once instead of there after a while."""
    real = db.create_engine

    def create_engine(url: str, **kwargs: Any) -> Any:
        engine = real(url, **kwargs)
        if engine.dialect.name == "postgresql":

            @sa.event.listens_for(engine.sync_engine, "connect")
            def _prepare_generically(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.driver_connection.prepare_threshold = 0
                cursor = dbapi_connection.cursor()
                cursor.execute("SET plan_cache_mode = force_generic_plan")
                cursor.close()
                dbapi_connection.commit()

        return engine

    monkeypatch.setattr(db, "create_engine", create_engine)
    real_prepare = db.engine._prepare_connection

    async def prepare_generically(connection: Any) -> None:
        await real_prepare(connection)
        connection.prepare_threshold = 0
        await connection.execute("SET plan_cache_mode = force_generic_plan")

    # The webhook's own pool of psycopg connections (db.open_driver_pool), likewise.
    monkeypatch.setattr(db.engine, "_prepare_connection", prepare_generically)


def _admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    admin = _admin_url()
    plain = make_url(admin).set(drivername="postgresql")
    dsn = plain.render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL not reachable at {plain.render_as_string()}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    name = f"platica_test_{uuid.uuid4().hex[:12]}"
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = plain.set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    yield url
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate_all(url: str) -> None:
    engine = sa.create_engine(db.sync_url(url))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    engine.dispose()


# For a test whose rules do not depend on the database (its statements run on both elsewhere):
# `database_url` on SQLite only, which keeps `make test` short.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# For a slow end-to-end case that SQLite would only repeat: on PostgreSQL only.
postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each test that takes this runs on a SQLite file and on PostgreSQL (emptied first)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/platica.db"
        db.upgrade(url)
        return url
    postgres: str = request.getfixturevalue("postgres_url")
    truncate_all(postgres)
    return postgres


@pytest.fixture
def use_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """database_url, as the DATABASE_URL of the `platica` commands a test runs."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/platica.db"
    db.upgrade(url)
    return url


# make_settings' PUBLIC_BASE_URL: a live server started with it puts its own URL in its place,
# as an operator sets PUBLIC_BASE_URL to where Twilio reaches the server. Webhooks posted to
# `server.url + path` are then signed over the very URL the server checks.
OWN_URL = "http://live-server.invalid"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test: Twilio configured (so signatures are checked) unless overridden,
    PUBLIC_BASE_URL being the live server's own URL (see OWN_URL)."""
    values: dict[str, Any] = {
        "_env_file": None,
        "DATABASE_URL": database_url,
        "PUBLIC_BASE_URL": OWN_URL,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": SMS_NUMBER,
        "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER,
        # Nothing listens on the discard port: tests that want Twilio start the fake; the rest
        # must never reach the real API.
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
    }
    values.update(overrides)
    return load_settings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """An ASGI app served by uvicorn in a background thread on a free port, over real HTTP."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class LiveServer(ThreadedServer):
    """Plática served by uvicorn in a background thread, reached over real HTTP."""

    def __init__(self, settings: Settings, *, worker: bool = True) -> None:
        # As given (so that another server started with them gets its own URL, see OWN_URL).
        self.settings = settings
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if settings.PUBLIC_BASE_URL == OWN_URL:
            settings = settings.model_copy(update={"PUBLIC_BASE_URL": self.url})
        self.app = create_app(settings, worker=worker)
        super().__init__(self.app, port)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Start servers with given settings (and `worker=False` for no worker); all are stopped
    after the test."""
    servers: list[LiveServer] = []

    def start(settings: Settings, *, worker: bool = True) -> LiveServer:
        server = LiveServer(settings, worker=worker).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Database:
    """Direct SQL on the test database, for assertions."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(db.sync_url(url))

    def rows(self, sql: str, **params: Any) -> list[sa.Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text(sql), params)

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    handle = Database(database_url)
    yield handle
    handle.engine.dispose()
