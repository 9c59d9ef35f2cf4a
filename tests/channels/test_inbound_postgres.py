"""The webhook's one-statement write on PostgreSQL: its round trips, the reply job it queues in
the same transaction (as Procrastinate itself would), and a database restart under it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from platica.jobs.runner import ProcrastinateRunner
from tests.conftest import Database, LiveServer, make_settings, truncate_all
from tests.factories import inbound_form, new_sid, post_signed, status_form

pytestmark = pytest.mark.postgres

JOB_COLUMNS = "queue_name, task_name, priority, lock, queueing_lock, args, status"


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


class Statements:
    """The SQL statements the server runs while in the block."""

    def __init__(self, server: LiveServer) -> None:
        self.engine = server.app.state.platica.engine.sync_engine
        self.seen: list[str] = []

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def send(client: httpx.Client, server: LiveServer, **form: Any) -> dict[str, str]:
    data = inbound_form(**form)
    response = post_signed(client, server.url, "/webhook/sms", data)
    assert response.status_code == 200, response.text
    return data


class TestOneStatement:
    def test_a_webhook_is_one_statement(self, quiet_server, client, database):
        send(client, quiet_server, body="warm the pool up")
        with Statements(quiet_server) as statements:
            send(client, quiet_server, body="¿Abren hoy?")

        # In autocommit: no BEGIN or COMMIT either (psycopg sends those as statements of
        # their own, which this would count).
        assert len(statements.seen) == 1, statements.seen
        assert database.count("messages") == 2
        assert database.count("webhook_logs") == 2

    def test_a_status_callback_is_one_statement(self, quiet_server, client, database):
        send(client, quiet_server)
        sid = new_sid()
        database.execute(
            "INSERT INTO messages (account_id, conversation_id, channel, direction, author, body,"
            " media, twilio_sid, status, part, attempts, created_at, updated_at)"
            " SELECT account_id, conversation_id, channel, 'outbound', 'ai', 'Hola!', media,"
            " :sid, 'queued', 0, 0, created_at, updated_at FROM messages",
            sid=sid,
        )
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

    def test_the_reply_job_is_queued_with_the_message(self, quiet_server, client, database):
        send(client, quiet_server)

        jobs = database.rows(f"SELECT {JOB_COLUMNS}, scheduled_at FROM procrastinate_jobs")
        conversation_id = database.scalar("SELECT id FROM conversations")
        received = database.scalar("SELECT created_at FROM messages")
        assert len(jobs) == 1
        job = jobs[0]
        assert (job.queue_name, job.task_name, job.status) == (
            "replies",
            "reply_to_conversation",
            "todo",
        )
        assert job.queueing_lock == f"conversation:{conversation_id}"
        assert job.args == {"conversation_id": conversation_id}
        # The account's debounce window (2 s by default) is the job's delay.
        assert job.scheduled_at - received == timedelta(seconds=2)

    def test_one_waiting_job_per_conversation(self, quiet_server, client, database):
        for body in ("uno", "dos", "tres"):
            send(client, quiet_server, body=body)
        send(client, quiet_server, sender="+34611000222")

        assert database.count("messages") == 4
        assert database.count("procrastinate_jobs") == 2

    def test_no_job_for_a_duplicate_or_a_rate_limited_message(
        self, pg_url, live_server, client, database
    ):
        server = live_server(make_settings(pg_url, RATE_LIMIT_PER_SENDER="1/minute"), worker=False)
        first = send(client, server)
        post_signed(client, server.url, "/webhook/sms", first)
        database.execute("DELETE FROM procrastinate_jobs")
        send(client, server, body="over the limit")

        assert database.count("procrastinate_jobs") == 0
        outcomes = database.rows("SELECT outcome FROM webhook_logs ORDER BY id")
        assert [r.outcome for r in outcomes] == ["accepted", "duplicate", "rate_limited"]

    def test_the_job_row_is_the_one_procrastinate_itself_writes(
        self, quiet_server, client, database, pg_url
    ):
        send(client, quiet_server)
        ours = database.rows(f"SELECT {JOB_COLUMNS} FROM procrastinate_jobs")[0]
        conversation_id = ours.args["conversation_id"]
        database.execute("DELETE FROM procrastinate_jobs")

        async def defer_with_procrastinate() -> None:
            async def never_called(_conversation_id: int) -> None:
                raise AssertionError("no worker runs here")

            runner = ProcrastinateRunner(pg_url, never_called)
            await runner.start(work=False)
            try:
                await runner.defer(conversation_id)
            finally:
                await runner.stop()

        asyncio.run(defer_with_procrastinate())

        theirs = database.rows(f"SELECT {JOB_COLUMNS} FROM procrastinate_jobs")[0]
        assert tuple(ours) == tuple(theirs)


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
