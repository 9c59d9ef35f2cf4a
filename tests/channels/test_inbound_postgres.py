"""The webhook's one-statement write on PostgreSQL: its round trips, the reply it queues in the
same transaction (the conversation's reply_due_at), and a database restart under it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from platica import db
from tests.conftest import Database, LiveServer, make_settings, truncate_all
from tests.factories import inbound_form, new_sid, post_signed, status_form
from tests.polling import wait_for
from tests.records import add_queued_reply

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    truncate_all(postgres_url)
    return postgres_url


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    handle = Database(pg_url)
    yield handle
    handle.engine.dispose()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def quiet_server(pg_url, live_server) -> LiveServer:
    """A server with no worker, so the jobs it queues stay in the table to be looked at."""
    server: LiveServer = live_server(make_settings(pg_url), worker=False)
    return server


CONNECTION_SETUP = ("SET platica.service", "SET plan_cache_mode", "SELECT 1")


class Statements:
    """The SQL statements the server runs while in the block: through SQLAlchemy, and straight
    through psycopg (the webhook's own pool, see db.open_driver_pool)."""

    def __init__(self, server: LiveServer) -> None:
        self.engine = server.app.state.platica.engine.sync_engine
        self.monkeypatch = pytest.MonkeyPatch()
        self.seen: list[str] = []

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._record)
        # Every statement goes through a cursor (AsyncConnection.execute makes one too).
        real = psycopg.AsyncCursor.execute
        seen = self.seen

        def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            # Not what a connection of the pool runs for itself (set-up, an idle one's ping).
            if not str(query).startswith(CONNECTION_SETUP):
                seen.append(str(query))
            return real(cursor, query, *args, **kwargs)

        self.monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)
        self.monkeypatch.undo()


def send(client: httpx.Client, server: LiveServer, **form: Any) -> dict[str, str]:
    data = inbound_form(**form)
    response = post_signed(client, server.url, "/webhook/sms", data)
    assert response.status_code == 200, response.text
    return data


class TestOneStatement:
    def test_a_webhook_is_one_statement_and_a_wake_up(self, quiet_server, client, database):
        with Statements(quiet_server) as warm_up:
            send(client, quiet_server, body="warm the pool up")
            # Its wake-up too is sent after the response: let it go out before counting.
            wait_for(lambda: any("pg_notify" in seen for seen in warm_up.seen), "the wake-up")
        with Statements(quiet_server) as statements:
            send(client, quiet_server, body="¿Abren hoy?")
            # The workers' wake-up goes out after the response (and, under load, is shared by
            # every message that arrives meanwhile: tests/jobs/test_postgres_runner.py).
            wait_for(lambda: len(statements.seen) >= 2, "the wake-up")

        # In autocommit: no BEGIN or COMMIT either (psycopg sends those as statements of
        # their own, which this would count: SQLAlchemy's before_cursor_execute sees them, and
        # the psycopg connections of the webhook's pool are in autocommit).
        record, wake = statements.seen
        assert record.startswith("WITH cfg AS"), statements.seen
        assert wake.startswith("SELECT pg_notify("), statements.seen
        assert database.count("messages") == 2
        assert database.count("webhook_logs") == 2

    def test_a_status_callback_is_one_statement(self, quiet_server, client, database):
        send(client, quiet_server)
        sid = new_sid()
        add_queued_reply(database, sid)
        with Statements(quiet_server) as statements:
            for status in ("sent", "delivered", "sent"):
                form = status_form(sid, status)
                assert post_signed(client, quiet_server.url, "/webhook/status", form).is_success

        assert len(statements.seen) == 3
        assert database.scalar("SELECT status FROM messages WHERE twilio_sid = :sid", sid=sid) == (
            "delivered"
        )
        outcomes = database.rows(
            "SELECT outcome FROM webhook_logs WHERE endpoint = 'status' ORDER BY id"
        )
        assert [r.outcome for r in outcomes] == ["status_updated", "status_updated", "status_stale"]

    def test_the_conversation_is_made_due_with_the_message(self, quiet_server, client, database):
        send(client, quiet_server)

        received = database.scalar("SELECT created_at FROM messages")
        due = database.scalar("SELECT reply_due_at FROM conversations")
        # The account's debounce window (2 s by default) is the delay.
        assert due - received == timedelta(seconds=2)

    def test_a_burst_keeps_the_first_due_time(self, quiet_server, client, database):
        for body in ("uno", "dos", "tres"):
            send(client, quiet_server, body=body)
        send(client, quiet_server, sender="+34611000222")

        first = database.scalar("SELECT min(created_at) FROM messages")
        rows = database.rows("SELECT reply_due_at FROM conversations ORDER BY id")
        assert database.count("messages") == 4
        # The reply task itself waits out the rest of the burst's window (replies/pipeline.py).
        assert rows[0].reply_due_at - first == timedelta(seconds=2)
        assert rows[1].reply_due_at is not None

    def test_a_due_time_already_sooner_is_kept(self, quiet_server, client, database):
        send(client, quiet_server)
        database.execute("UPDATE conversations SET reply_due_at = now() - interval '1 hour'")
        before = database.scalar("SELECT reply_due_at FROM conversations")

        send(client, quiet_server, body="otra")

        assert database.scalar("SELECT reply_due_at FROM conversations") == before

    def test_a_duplicate_or_a_flood_message_makes_nothing_due(
        self, pg_url, live_server, client, database
    ):
        server = live_server(make_settings(pg_url, RATE_LIMIT_FLOOD="1/minute"), worker=False)
        first = send(client, server)
        database.execute("UPDATE conversations SET reply_due_at = NULL")
        post_signed(client, server.url, "/webhook/sms", first)
        send(client, server, body="over the limit")

        assert database.scalar("SELECT reply_due_at FROM conversations") is None
        outcomes = database.rows("SELECT outcome FROM webhook_logs ORDER BY id")
        assert [r.outcome for r in outcomes] == ["accepted", "duplicate", "flood"]
        states = database.rows("SELECT reply_state FROM messages ORDER BY id")
        assert [r.reply_state for r in states] == ["pending", "skipped"]


class TestDatabaseRestart:
    def test_webhooks_still_land_after_every_connection_is_dropped(
        self, quiet_server, client, database, pg_url
    ):
        send(client, quiet_server, body="before")
        # What a restart does to the server's pooled connections.
        name = make_url(pg_url).database
        admin = make_url(pg_url).set(drivername="postgresql", database="postgres")
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            dropped = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
        assert dropped is not None
        assert dropped[0] >= 1
        database.engine.dispose()  # this test's own connections were dropped too

        send(client, quiet_server, body="after")

        bodies = [r.body for r in database.rows("SELECT body FROM messages ORDER BY id")]
        assert bodies == ["before", "after"]


def _admin_dsn(pg_url: str) -> str:
    return (
        make_url(pg_url)
        .set(drivername="postgresql", database="postgres")
        .render_as_string(hide_password=False)
    )


def terminate_backends(pg_url: str) -> int:
    """What a database restart does to every connection to the database: AdminShutdown."""
    with psycopg.connect(_admin_dsn(pg_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (make_url(pg_url).database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def database_down(pg_url: str) -> Iterator[None]:
    """The database refuses every connection (and has dropped those it had) while in the block."""
    name = make_url(pg_url).database
    with psycopg.connect(_admin_dsn(pg_url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    try:
        terminate_backends(pg_url)
        yield
    finally:
        with psycopg.connect(_admin_dsn(pg_url), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


class TestDatabaseOutage:
    """Item 14 of issue 12: while the database is down a webhook fails fast, well within the
    15 s Twilio waits, instead of queueing 30 s for a connection; a connection lost under a
    statement is retried once on a fresh one."""

    async def test_the_pools_give_up_waiting_within_five_seconds(self, pg_url):
        engine = db.create_engine(pg_url)
        pool = await db.open_driver_pool(pg_url)
        try:
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                assert raw.driver_connection is not None
                engine_dsn = raw.driver_connection.info.dsn
            async with pool.connection() as driver_connection:
                pool_dsn = driver_connection.info.dsn
        finally:
            await pool.close()
            await engine.dispose()
        assert engine.pool.timeout() < 5  # type: ignore[attr-defined]  # QueuePool's
        assert pool.timeout < 5
        # And a server that does not answer at all is given up on as quickly.
        assert "connect_timeout=2" in engine_dsn.split()
        assert "connect_timeout=2" in pool_dsn.split()

    async def test_sqlite_keeps_its_long_wait_for_the_writer(self, tmp_path):
        engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/wait.db")
        try:
            assert engine.pool.timeout() == 60  # type: ignore[attr-defined]  # QueuePool's
        finally:
            await engine.dispose()

    def test_a_webhook_answers_503_at_once_while_the_database_is_down(
        self, pg_url, live_server, database, monkeypatch
    ):
        # Down for a while: every pooled connection is checked before use, and found dead.
        monkeypatch.setattr(db.engine, "PING_IDLE_SECONDS", -1.0)
        server = live_server(make_settings(pg_url), worker=False)
        # Well under the 30 s the pools used to wait, and under Twilio's 15 s.
        with httpx.Client(timeout=10) as client:
            send(client, server, body="before")
            with database_down(pg_url):
                response = post_signed(client, server.url, "/webhook/sms", inbound_form())
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_unavailable"
            database.engine.dispose()
            # Back up: the next webhook lands.
            wait_for(
                lambda: (
                    post_signed(
                        client, server.url, "/webhook/sms", inbound_form(body="after")
                    ).status_code
                    == 200
                ),
                "the webhook to work again",
            )
        assert [r.body for r in database.rows("SELECT body FROM messages ORDER BY id")] == [
            "before",
            "after",
        ]

    def test_no_message_is_lost_when_connections_are_terminated_mid_load(
        self, quiet_server, database, pg_url
    ):
        forms = [inbound_form(sender=f"+3460000{i:04d}", body=f"m{i}") for i in range(120)]
        answered: list[int] = []
        lock = threading.Lock()
        sweeps = threading.Semaphore(0)

        def post(form: dict[str, str]) -> int:
            with httpx.Client(timeout=30) as client:
                status = post_signed(client, quiet_server.url, "/webhook/sms", form).status_code
            with lock:
                answered.append(status)
                if len(answered) % 30 == 0:
                    sweeps.release()  # a restart while other requests are in flight
            return status

        def sweeper() -> int:
            dropped = 0
            for _ in range(3):
                sweeps.acquire(timeout=60)
                dropped += terminate_backends(pg_url)
            return dropped

        with ThreadPoolExecutor(max_workers=9) as pool:
            killer = pool.submit(sweeper)
            statuses = list(pool.map(post, forms))
            assert killer.result() >= 3

        database.engine.dispose()
        assert statuses == [200] * len(forms)
        assert database.count("messages") == len(forms)
