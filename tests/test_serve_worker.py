"""`platica serve` on PostgreSQL answers with its worker in a child process: at a lower CPU
priority, replaced when it dies, stopped with the server and killed with it. On SQLite, no child.
Real processes throughout (read from /proc, so Linux only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from platica.supervise import NICENESS, Backoff, WorkerSupervisor, watch_parent
from tests import test_faults
from tests.conftest import truncate_all
from tests.factories import inbound_form, post_signed
from tests.polling import wait_for
from tests.test_faults import ServerProcess, settled

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

# tests/test_faults.py's fixtures: the fake LLM and Twilio, the server's environment, and the
# list of started servers (stopped after each test).
fakes = test_faults.fakes
server_env = test_faults.server_env
servers = test_faults.servers


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on (the name may hold spaces), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def pid_of(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def worker_of(server: ServerProcess) -> int:
    pids = wait_for(lambda: children(pid_of(server)), "the worker child")
    assert len(pids) == 1, f"several children: {pids}"
    return int(pids[0])


def answer_one(server: ServerProcess, database, twilio, body: str) -> None:
    with httpx.Client(timeout=30) as client:
        response = post_signed(client, server.url, "/webhook/sms", inbound_form(body=body))
    assert response.status_code == 200, response.text
    inbound = database.scalar("SELECT count(*) FROM messages WHERE direction = 'inbound'")
    wait_for(lambda: settled(database, inbound), "the reply", seconds=60)
    assert f"Echo: {body}" in [message["body"] for message in twilio.sent]


@pytest.mark.postgres
class TestChildWorker:
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        truncate_all(postgres_url)
        return postgres_url

    @pytest.fixture
    def server(self, database, server_env, servers, fakes, tmp_path) -> ServerProcess:
        fakes[0].latency = 0
        server = ServerProcess(server_env, tmp_path / "serve.log").start()
        servers.append(server)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        return server

    def test_answers_from_a_lower_priority_child(self, server, database, fakes, tmp_path):
        child = worker_of(server)

        parent_nice = os.getpriority(os.PRIO_PROCESS, pid_of(server))
        wait_for(
            lambda: os.getpriority(os.PRIO_PROCESS, child) == parent_nice + NICENESS,
            "the worker's lower priority",
        )
        answer_one(server, database, fakes[1], "hola")
        log = (tmp_path / "serve.log").read_text()
        assert f"Worker: child process pid {child} (lower CPU priority)." in log
        # The server's own services do not work; the child's do.
        assert "database=postgresql worker=False" in log
        assert "database=postgresql worker=True" in log

    def test_child_worker_replies_carry_the_status_callback(self, server, database, fakes):
        """The child never sees a webhook: the StatusCallback comes from PUBLIC_BASE_URL, and
        Twilio's delivery reports reach the server and are recorded."""
        twilio = fakes[1]
        twilio.callbacks = True

        answer_one(server, database, twilio, "entregado")

        assert [message["status_callback"] for message in twilio.sent] == [
            server.url + "/webhook/status"
        ]
        wait_for(
            lambda: (
                database.scalar("SELECT status FROM messages WHERE direction = 'outbound'")
                == "delivered"
            ),
            "the delivery report to be recorded",
        )

    def test_sigkill_of_the_server_kills_the_worker(self, server):
        child = worker_of(server)

        server.kill()

        wait_for(lambda: not alive(child), "the worker to die with the server", seconds=10)

    def test_dead_worker_is_replaced(self, server, database, fakes, tmp_path):
        first = worker_of(server)

        os.kill(first, signal.SIGKILL)

        replaced = wait_for(
            lambda: [pid for pid in children(pid_of(server)) if pid != first], "a new worker"
        )
        assert len(replaced) == 1
        answer_one(server, database, fakes[1], "otra vez")
        assert "worker.exited" in (tmp_path / "serve.log").read_text()

    def test_sigterm_stops_both_cleanly(self, server, tmp_path):
        child = worker_of(server)
        # Until then the child is still importing, and SIGTERM simply ends it.
        wait_for(
            lambda: "worker=True" in (tmp_path / "serve.log").read_text(), "the worker to start"
        )

        server.process.send_signal(signal.SIGTERM)

        assert server.process.wait(timeout=30) == 0
        assert not alive(child)
        stopped = [
            line
            for line in (tmp_path / "serve.log").read_text().splitlines()
            if "worker.stopped" in line
        ]
        assert len(stopped) == 1
        assert f"pid={child} returncode=0" in stopped[0]

    def test_no_worker_no_child(self, database, server_env, servers, tmp_path):
        server = ServerProcess(server_env, tmp_path / "serve.log").start("--no-worker")
        servers.append(server)

        assert children(pid_of(server)) == []
        assert "Worker: none here (--no-worker)." in (tmp_path / "serve.log").read_text()


class TestSqliteServe:
    @pytest.fixture
    def database_url(self, sqlite_url: str) -> str:
        return sqlite_url

    def test_worker_stays_in_the_process(self, server_env, servers, tmp_path):
        # The child would be started before the server answers /healthz.
        server = ServerProcess(server_env, tmp_path / "serve.log").start()
        servers.append(server)

        assert children(pid_of(server)) == []
        assert "Worker: in this process." in (tmp_path / "serve.log").read_text()


class TestBackoff:
    def test_doubles_up_to_the_ceiling(self):
        backoff = Backoff(first=1, most=30, stable_seconds=60)

        assert [backoff.after(ran_seconds=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]

    def test_starts_over_after_a_long_run(self):
        backoff = Backoff(first=1, most=30, stable_seconds=60)
        for _ in range(4):
            backoff.after(ran_seconds=0)

        assert backoff.after(ran_seconds=60) == 1
        assert backoff.after(ran_seconds=5) == 2


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


class TestWorkerSupervisor:
    def test_restarts_a_child_that_exits(self, tmp_path):
        starts = tmp_path / "starts"
        command = python(
            "import os, sys; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')", str(starts)
        )
        supervisor = WorkerSupervisor(command, first_backoff=0.01, max_backoff=0.05)
        supervisor.start()
        try:
            wait_for(lambda: starts.exists() and len(starts.read_text().split()) >= 3, "3 starts")
        finally:
            supervisor.stop()

        pids = [int(pid) for pid in starts.read_text().split()]
        assert len(set(pids)) == len(pids)
        assert not any(alive(pid) for pid in pids), "a child left behind (zombie)"

    def test_stop_terminates_the_child(self):
        supervisor = WorkerSupervisor(python("import time; time.sleep(60)"))
        pid = supervisor.start()
        assert pid is not None

        assert supervisor.stop() == -signal.SIGTERM
        assert not alive(pid)

    def test_stop_kills_a_child_that_ignores_sigterm(self, tmp_path):
        ready = tmp_path / "ready"
        command = python(
            "import signal, sys, time, pathlib\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "pathlib.Path(sys.argv[1]).touch()\n"
            "time.sleep(60)",
            str(ready),
        )
        supervisor = WorkerSupervisor(command, stop_seconds=0.2)
        pid = supervisor.start()
        assert pid is not None
        wait_for(ready.exists, "the child to ignore SIGTERM")

        assert supervisor.stop() == -signal.SIGKILL
        assert not alive(pid)

    def test_stop_before_start(self):
        assert WorkerSupervisor(python("pass")).stop() is None


class TestChildSide:
    def test_exits_when_its_parent_is_not_the_given_one(self):
        # The server died before the child could ask to die with it.
        result = subprocess.run(
            [sys.executable, "-m", "platica.cli.child", "1"], capture_output=True, timeout=60
        )

        assert result.returncode == 1

    def test_usage(self):
        result = subprocess.run(
            [sys.executable, "-m", "platica.cli.child"], capture_output=True, text=True, timeout=60
        )

        assert result.returncode == 2
        assert "usage" in result.stderr

    def test_parent_watch_fallback(self):
        orphaned = threading.Event()

        watch_parent(os.getppid() + 1, orphaned.set, interval=0.01)

        assert orphaned.wait(10)
