"""Waking the workers on PostgreSQL: the reply jobs the webhook's statement queues stay quiet
(revision 0006), and the process that queued them sends one notification for a batch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from platica.jobs.runner import WAKE_CHANNEL, ProcrastinateRunner
from tests.conftest import LiveServer, make_settings, truncate_all
from tests.factories import inbound_form, post_signed

pytestmark = pytest.mark.postgres

DEADLINE_SECONDS = 10.0


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    truncate_all(postgres_url)
    return postgres_url


class Listener:
    """A LISTEN connection on the workers' channel, collecting the notifications' payloads."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.payloads: list[dict[str, Any]] = []

    async def wait_for(self, count: int, what: str) -> list[dict[str, Any]]:
        """Poll the connection until `count` notifications have come; fail at the deadline."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(self.payloads) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what} (got {self.payloads})")
            async for notify in self.connection.notifies(timeout=0.05, stop_after=1):
                self.payloads.append(json.loads(notify.payload))
        return self.payloads


@pytest.fixture
async def listener(pg_url: str) -> AsyncIterator[Listener]:
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
        await connection.execute(f'LISTEN "{WAKE_CHANNEL}"')
        yield Listener(connection)


async def never_called(_conversation_id: int) -> None:
    raise AssertionError("no worker runs here")


@pytest.fixture
async def runner(pg_url: str) -> AsyncIterator[ProcrastinateRunner]:
    """A runner that only queues and wakes (no worker)."""
    started = ProcrastinateRunner(pg_url, never_called)
    await started.start(work=False)
    yield started
    await started.stop()


@pytest.fixture
def quiet_server(pg_url: str, live_server: Any) -> LiveServer:
    server: LiveServer = live_server(make_settings(pg_url), worker=False)
    return server


class TestWebhookJobs:
    async def test_a_webhook_wakes_the_workers_once_without_the_row_trigger(
        self, quiet_server, listener
    ):
        def post() -> httpx.Response:
            with httpx.Client(timeout=30) as client:
                return post_signed(client, quiet_server.url, "/webhook/sms", inbound_form())

        response = await asyncio.to_thread(post)
        assert response.status_code == 200, response.text

        payloads = await listener.wait_for(1, "the wake-up")
        # The runner's payload names no job; the row trigger's would carry the job's id.
        assert payloads == [{"type": "job_inserted", "job_id": None}]

    async def test_jobs_deferred_through_procrastinate_still_notify_themselves(
        self, runner, listener, pg_url
    ):
        await runner.defer(12345)

        payloads = await listener.wait_for(1, "the trigger's notification")
        assert payloads[0]["type"] == "job_inserted"
        assert isinstance(payloads[0]["job_id"], int)


class TestWake:
    async def test_wakes_in_one_go_send_one_notification(self, runner, listener):
        for _ in range(50):
            runner.wake()
        await listener.wait_for(1, "the first wake-up")

        runner.wake()  # a marker: anything sent between the two would arrive before it
        payloads = await listener.wait_for(2, "the marker")

        assert len(payloads) == 2

    async def test_a_wake_while_one_is_on_its_way_is_sent_after_it(
        self, runner, listener, monkeypatch
    ):
        connector = runner._app.connector
        real = connector.execute_query_async
        in_flight = asyncio.Event()
        release = asyncio.Event()

        async def slow(query: str, **arguments: Any) -> None:
            in_flight.set()
            await release.wait()
            await real(query, **arguments)

        monkeypatch.setattr(connector, "execute_query_async", slow)
        runner.wake()
        await asyncio.wait_for(in_flight.wait(), DEADLINE_SECONDS)
        runner.wake()
        runner.wake()
        release.set()

        payloads = await listener.wait_for(2, "the second wake-up")
        assert len(payloads) == 2

    async def test_after_a_failed_wake_the_next_one_works(self, runner, listener, monkeypatch):
        connector = runner._app.connector
        real = connector.execute_query_async
        failed = asyncio.Event()

        async def failing_once(query: str, **arguments: Any) -> None:
            if not failed.is_set():
                failed.set()
                raise psycopg.OperationalError("the server closed the connection")
            await real(query, **arguments)

        monkeypatch.setattr(connector, "execute_query_async", failing_once)
        runner.wake()
        await asyncio.wait_for(failed.wait(), DEADLINE_SECONDS)
        runner.wake()

        assert await listener.wait_for(1, "the wake-up after the failure")
