"""/metrics in the split PostgreSQL mode: `platica serve` answers HTTP, its worker child answers
messages, and the worker's counters (kept in PROMETHEUS_MULTIPROC_DIR's files) reach the
server's /metrics, added to the server's own. Real processes, as in tests/test_serve_worker.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from platica import metrics
from tests import test_faults
from tests.conftest import truncate_all
from tests.factories import inbound_form, post_signed
from tests.polling import wait_for
from tests.test_faults import ServerProcess
from tests.test_serve_worker import children, pid_of, worker_of

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

fakes = test_faults.fakes
server_env = test_faults.server_env
servers = test_faults.servers


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a metric family shown twice"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def ai_replies(server: ServerProcess) -> float:
    key = ("platica_replies_total", (("channel", "sms"), ("outcome", "ai")))
    return scrape(server).get(key, 0.0)


def send(server: ServerProcess, body: str) -> None:
    with httpx.Client(timeout=30) as client:
        response = post_signed(client, server.url, "/webhook/sms", inbound_form(body=body))
    assert response.status_code == 200, response.text


@pytest.mark.postgres
class TestWorkerMetrics:
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        truncate_all(postgres_url)
        return postgres_url

    @pytest.fixture
    def server(self, database, server_env, servers, fakes, tmp_path) -> ServerProcess:
        fakes[0].latency = 0
        # The directory the server makes for its worker's files goes here.
        server_env["TMPDIR"] = str(tmp_path)
        server = ServerProcess(server_env, tmp_path / "serve.log").start()
        servers.append(server)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        return server

    def test_the_workers_replies_reach_the_servers_metrics(self, server, tmp_path):
        worker_of(server)
        assert ai_replies(server) == 0

        send(server, "Hola, ¿abren el domingo?")

        # The reply is counted when answered, its Twilio send's duration once sent.
        wait_for(
            lambda: (
                ai_replies(server) == 1
                and scrape(server).get(("platica_twilio_seconds_count", ())) == 1
            ),
            "the worker's reply and its send in /metrics",
            seconds=60,
        )
        samples = scrape(server)
        # The worker's LLM call and Twilio send; the server's own webhook, counted once.
        assert samples[("platica_llm_seconds_count", ())] == 1
        assert samples[("platica_twilio_seconds_count", ())] == 1
        assert (
            samples[("platica_webhooks_total", (("endpoint", "sms"), ("outcome", "accepted")))] == 1
        )
        # Gauges measured by the server at the scrape, not the worker's zeros.
        assert ("platica_pending_replies", ()) in samples
        [directory] = tmp_path.glob(f"platica-metrics-{pid_of(server)}-*")
        assert list(directory.glob("counter_*.db"))

    def test_a_dead_workers_counts_are_kept(self, server, database):
        first = worker_of(server)
        send(server, "uno")
        wait_for(lambda: ai_replies(server) == 1, "the first reply in /metrics", seconds=60)

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: [pid for pid in children(pid_of(server)) if pid != first], "a new worker")
        send(server, "dos")

        wait_for(lambda: ai_replies(server) == 2, "both replies in /metrics", seconds=60)

    def test_stopping_removes_the_directory(self, server, tmp_path):
        [directory] = tmp_path.glob(f"platica-metrics-{pid_of(server)}-*")

        server.stop()

        assert server.process.returncode == 0
        assert not directory.exists()

    def test_a_given_directory_is_shared_by_the_server_too(
        self, database, server_env, servers, fakes, tmp_path
    ):
        """PROMETHEUS_MULTIPROC_DIR set for `platica serve` too (as for separate workers): the
        server's metrics are in the files as well, and each is counted once."""
        fakes[0].latency = 0
        shared = tmp_path / "metrics"
        shared.mkdir()
        stale = shared / f"counter_{2**22 + 7}.db"  # left by a process long gone
        stale.write_bytes(b"")
        server_env[metrics.MULTIPROC_DIR] = str(shared)
        server = ServerProcess(server_env, tmp_path / "serve.log").start()
        servers.append(server)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        worker = worker_of(server)

        send(server, "hola")

        wait_for(lambda: ai_replies(server) == 1, "the worker's reply in /metrics", seconds=60)
        samples = scrape(server)
        assert (
            samples[("platica_webhooks_total", (("endpoint", "sms"), ("outcome", "accepted")))] == 1
        )
        assert not stale.exists()
        assert (shared / f"counter_{pid_of(server)}.db").exists()
        assert (shared / f"counter_{worker}.db").exists()
        server.stop()
        # Not the server's to remove; the worker's live gauges went with it.
        assert shared.is_dir()
        assert not list(shared.glob(f"gauge_live*_{worker}.db"))


class TestPrivateDirectory:
    """The directory `platica serve` makes for its worker's files is in memory by default: on a
    disk, the workers' page writes competed with PostgreSQL's flushes (the bench's ack p99)."""

    @pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system")
    def test_in_memory_by_default(self, monkeypatch):
        monkeypatch.delenv("TMPDIR", raising=False)
        monkeypatch.delenv(metrics.MULTIPROC_DIR, raising=False)
        directory, created = metrics.share_with_workers()
        try:
            assert created
            assert directory.parent == Path("/dev/shm")
            assert os.environ[metrics.MULTIPROC_DIR] == str(directory)
        finally:
            metrics.stop_sharing(directory, created=created)
        assert not directory.exists()
        assert metrics.MULTIPROC_DIR not in os.environ

    def test_under_tmpdir_when_set(self, monkeypatch, tmp_path):
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.delenv(metrics.MULTIPROC_DIR, raising=False)
        monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
        directory, created = metrics.share_with_workers()
        try:
            assert directory.parent == tmp_path
        finally:
            metrics.stop_sharing(directory, created=created)


class TestDeadFiles:
    def test_removes_only_the_files_of_dead_processes(self, tmp_path):
        dead = 2**22 + 7  # above Linux's pid_max default: no such process
        mine = os.getpid()
        for name in (f"counter_{dead}.db", f"gauge_livemax_{dead}.db", f"counter_{mine}.db"):
            (tmp_path / name).write_bytes(b"")

        assert metrics.remove_dead_files(tmp_path) == [dead]
        assert sorted(path.name for path in tmp_path.iterdir()) == [f"counter_{mine}.db"]


class TestFileBeingCreated:
    """prometheus_client creates a process's file and sizes it after: a scrape in between finds
    it at 0 bytes. Reading that file raised, and /metrics answered 500 while a worker started
    (seen in TestWorkerMetrics). The empty file is skipped; the others are read."""

    @pytest.mark.parametrize("server_file_backed", [False, True])
    def test_an_empty_file_is_skipped(self, tmp_path, monkeypatch, server_file_backed):
        mine = os.getpid()
        written = MmapedDict(str(tmp_path / f"counter_{mine}.db"))
        key = mmap_key(
            "platica_replies_total",
            "platica_replies_total",
            ["channel", "outcome"],
            ["whatsapp", "ai"],
            "",
        )
        written.write_value(key, 3.0, 0.0)
        written.close()
        (tmp_path / f"histogram_{mine}.db").write_bytes(b"")  # a worker creating it
        monkeypatch.setenv(metrics.MULTIPROC_DIR, str(tmp_path))
        monkeypatch.setattr(metrics, "file_backed", lambda: server_file_backed)

        scraped = {
            (sample.name, sample.labels.get("channel"), sample.labels.get("outcome")): sample.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for sample in family.samples
        }

        assert scraped[("platica_replies_total", "whatsapp", "ai")] >= 3.0


class TestCombine:
    """How a family from the server's memory and one from the workers' files are put together."""

    @staticmethod
    def family(name: str, kind: str, *samples: tuple[str, dict[str, str], float]) -> Metric:
        metric = Metric(name, "help", kind)
        for sample_name, labels, value in samples:
            metric.add_sample(sample_name, labels, value)
        return metric

    @staticmethod
    def values(metric: Metric) -> dict[tuple[str, str], float]:
        return {(s.name, ",".join(s.labels.values())): s.value for s in metric.samples}

    def test_counters_add_up_and_lose_their_creation_time(self):
        own = self.family(
            "platica_replies",
            "counter",
            ("platica_replies_total", {"outcome": "ai"}, 2),
            ("platica_replies_created", {"outcome": "ai"}, 1.7e9),
            ("platica_replies_total", {"outcome": "keyword"}, 1),
        )
        workers = self.family(
            "platica_replies", "counter", ("platica_replies_total", {"outcome": "ai"}, 5)
        )

        assert self.values(metrics._combine(own, workers)) == {
            ("platica_replies_total", "ai"): 7,
            ("platica_replies_total", "keyword"): 1,
        }

    def test_a_gauge_measured_at_the_scrape_is_the_servers(self):
        own = self.family("platica_pending_replies", "gauge", ("platica_pending_replies", {}, 4))
        workers = self.family(
            "platica_pending_replies", "gauge", ("platica_pending_replies", {}, 0)
        )

        assert self.values(metrics._combine(own, workers)) == {("platica_pending_replies", ""): 4}

    def test_a_workers_gauge_is_the_highest(self):
        own = self.family(
            "platica_broadcast_pace_mps", "gauge", ("platica_broadcast_pace_mps", {"c": "sms"}, 0)
        )
        workers = self.family(
            "platica_broadcast_pace_mps", "gauge", ("platica_broadcast_pace_mps", {"c": "sms"}, 5)
        )

        assert self.values(metrics._combine(own, workers)) == {
            ("platica_broadcast_pace_mps", "sms"): 5
        }
