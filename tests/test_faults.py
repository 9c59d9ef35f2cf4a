"""Nothing lost, nothing sent twice: `platica serve` processes killed mid-load, and two of them
sharing one PostgreSQL, against the fake LLM and the fake Twilio over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database, free_port
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, inbound_form, post_signed
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.polling import wait_for


class ServerProcess:
    """`python -m platica serve` in a child process, as an operator would run it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Where Twilio reaches it (required with Twilio credentials): its own URL, unless set.
        self.env = {"PUBLIC_BASE_URL": self.url, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *options: str) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "platica", "serve", "--port", str(self.port), *options],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "the server to start", seconds=60)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeTwilio]]:
    with FakeOpenAI(latency=1.0) as openai, FakeTwilio(latency=0.1) as twilio:
        yield openai, twilio


@pytest.fixture
def server_env(database_url, fakes, tmp_path) -> dict[str, str]:
    openai, twilio = fakes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "OPENAI_"))}
    env.update(
        DATABASE_URL=database_url,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_PHONE_NUMBER=SMS_NUMBER,
        TWILIO_API_BASE_URL=twilio.url,
        OPENAI_BASE_URL=openai.url,
        OPENAI_API_KEY="sk-local-0123456789",
        LOG_LEVEL="INFO",
    )
    env.pop("PUBLIC_BASE_URL", None)
    return env


@pytest.fixture
def servers(server_env, tmp_path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def senders(count: int) -> list[str]:
    return [f"+3460000{index:04d}" for index in range(count)]


def post_all(
    client: httpx.Client, targets: list[ServerProcess], forms: list[dict[str, str]]
) -> None:
    for index, form in enumerate(forms):
        target = targets[index % len(targets)]
        response = post_signed(client, target.url, "/webhook/sms", form)
        assert response.status_code == 200, response.text


def settled(database: Database, expected_inbound: int) -> bool:
    inbound = database.scalar("SELECT count(*) FROM messages WHERE direction = 'inbound'")
    unfinished = database.scalar(
        "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
        " OR (direction = 'outbound' AND status IN ('pending', 'sending'))"
    )
    return bool(inbound == expected_inbound and unfinished == 0)


class TestCrashRecovery:
    def test_sigkill_mid_load_then_restart_answers_each_message_once(
        self, database_url, database, server_env, servers, fakes, tmp_path
    ):
        _openai, twilio = fakes
        # Four replies at a time (1 s each): the kill lands with most of the 30 still to answer.
        server_env["WORKER_CONCURRENCY"] = "4"
        first = ServerProcess(server_env, tmp_path / "first.log").start()
        servers.append(first)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        numbers = senders(30)
        forms = [inbound_form(sender=number, body=f"hola {number}") for number in numbers]

        with httpx.Client(timeout=30) as client:
            post_all(client, [first], forms)
        # Kill while LLM calls (1 s each) are in flight and some replies are out.
        wait_for(lambda: len(twilio.sent) >= 3, "the first replies")
        first.kill()
        sent_before_restart = len(twilio.sent)
        assert sent_before_restart < len(numbers), "the kill came too late to prove anything"

        second = ServerProcess(server_env, tmp_path / "second.log").start()
        servers.append(second)
        wait_for(lambda: settled(database, len(numbers)), "every message answered", seconds=90)

        per_recipient = Counter(message["to"] for message in twilio.sent)
        assert sorted(per_recipient) == sorted(numbers)
        assert set(per_recipient.values()) == {1}, "a reply was sent twice or not at all"
        replies = database.rows(
            "SELECT twilio_sid, status FROM messages WHERE direction = 'outbound'"
        )
        assert len(replies) == len(numbers)
        assert {r.twilio_sid for r in replies} == {m["sid"] for m in twilio.sent}

    def test_kill_during_a_hanging_twilio_send_does_not_send_twice(
        self, database_url, database, server_env, servers, fakes, tmp_path
    ):
        """Twilio accepted the message but the answer never came back before the kill."""
        openai, twilio = fakes
        openai.latency = 0
        twilio.hang_seconds = 30
        twilio.fail_next("timeout")
        first = ServerProcess(server_env, tmp_path / "first.log").start()
        servers.append(first)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")

        with httpx.Client(timeout=30) as client:
            post_all(client, [first], [inbound_form(body="hola")])
        wait_for(lambda: len(twilio.sent) == 1, "Twilio to accept the message")
        first.kill()
        assert database.scalar("SELECT status FROM messages WHERE direction = 'outbound'") == (
            "sending"
        )

        second = ServerProcess(server_env, tmp_path / "second.log").start()
        servers.append(second)
        wait_for(lambda: settled(database, 1), "the reply to be reconciled", seconds=60)

        assert len(twilio.sent) == 1
        sid = database.scalar("SELECT twilio_sid FROM messages WHERE direction = 'outbound'")
        assert sid == twilio.sent[0]["sid"]
        assert "reply.recovered" in (tmp_path / "second.log").read_text()


@pytest.mark.postgres
class TestTwoServers:
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        from tests.conftest import truncate_all

        truncate_all(postgres_url)
        return postgres_url

    def test_two_processes_answer_each_message_exactly_once_in_order(
        self, database, server_env, servers, fakes, tmp_path
    ):
        openai, twilio = fakes
        openai.latency = 0.2
        a = ServerProcess(server_env, tmp_path / "a.log").start()
        b = ServerProcess(server_env, tmp_path / "b.log").start()
        servers.extend([a, b])
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        numbers = senders(12)
        forms: list[dict[str, str]] = []
        for turn in range(4):
            forms.extend(inbound_form(sender=n, body=f"{n} mensaje {turn}") for n in numbers)

        with httpx.Client(timeout=30) as client:
            post_all(client, [a, b], forms)
        wait_for(lambda: settled(database, len(forms)), "every message handled", seconds=90)

        states = Counter(
            r.reply_state
            for r in database.rows("SELECT reply_state FROM messages WHERE direction = 'inbound'")
        )
        assert states == {"answered": len(forms)}
        replies = database.rows(
            "SELECT reply_to_id, body FROM messages WHERE direction = 'outbound' ORDER BY id"
        )
        assert len({r.reply_to_id for r in replies}) == len(replies), "two replies to one message"
        assert len(twilio.sent) == len(replies) == len(openai.requests)
        for number in numbers:
            turns = [int(m["body"].rsplit(" ", 1)[1]) for m in twilio.sent if m["to"] == number]
            assert turns == sorted(turns), f"replies to {number} out of order: {turns}"
            assert len(turns) == len(set(turns)), f"{number} answered twice: {turns}"
            assert turns[-1] == 3, "the last message was not answered"

    def test_separate_worker_process_answers_for_an_api_only_server(
        self, database, server_env, servers, fakes, tmp_path
    ):
        openai, twilio = fakes
        openai.latency = 0
        api = ServerProcess(server_env, tmp_path / "api.log").start("--no-worker")
        servers.append(api)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        with httpx.Client(timeout=30) as client:
            post_all(client, [api], [inbound_form(body="hola")])
        # Nobody works in the API process: the message waits, stored.
        assert database.scalar("SELECT reply_state FROM messages") == "pending"

        log = (tmp_path / "worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "platica", "worker"],
            # Delivery reports go to the server that receives webhooks.
            env={**server_env, "PUBLIC_BASE_URL": api.url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for(lambda: settled(database, 1), "the worker's reply", seconds=60)
            assert [m["body"] for m in twilio.sent] == ["Echo: hola"]
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0


class TestWorkerCommand:
    def test_worker_refuses_sqlite(self, sqlite_url, server_env):
        env = {**server_env, "DATABASE_URL": sqlite_url, "PUBLIC_BASE_URL": "http://127.0.0.1:9"}
        result = subprocess.run(
            [sys.executable, "-m", "platica", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "PostgreSQL" in result.stderr
