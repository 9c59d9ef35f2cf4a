"""Child processes (the fakes, `platica serve`, the bare ASGI app) and their CPU and memory.

CPU and RSS come from /proc (Linux): utime+stime from /proc/PID/stat, VmRSS from
/proc/PID/status, sampled a few times a second while a phase runs. The PostgreSQL server is
counted whole, as a process tree: see `server_cpu_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the ")" that ends comm (which may hold spaces): element 0 is
    field 3 of proc(5) (state), so field N is element N - 3. None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, or None when it is gone."""
    fields = _stat(pid)
    if fields is None or len(fields) < 13:
        return None
    # utime is field 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parent_pid(pid: int) -> int | None:
    """Field 4 of /proc/PID/stat, or None when the process is gone."""
    fields = _stat(pid)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


def process_name(pid: int) -> str | None:
    """comm (field 2 of /proc/PID/stat), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.find("(") + 1 : text.rfind(")")]


def postgres_server_pid(backend_pid: int) -> int | None:
    """The postmaster's pid from one of its backends' (call while that backend is connected),
    or None when these are not PostgreSQL processes on this machine: a server elsewhere (or in
    another pid namespace) would make the pid name some unrelated process, or none."""
    parent = parent_pid(backend_pid)
    if parent is None or process_name(backend_pid) != "postgres":
        return None
    return parent if process_name(parent) == "postgres" else None


def server_cpu_seconds(root: int, attempts: int = 5) -> float | None:
    """CPU time so far of a whole server: the root process (the postmaster) with every child it
    ever had. Its own utime+stime, plus cutime+cstime (the children it has reaped: exited
    backends, autovacuum workers), plus utime+stime of each live child (backends, WAL writer,
    checkpointer...). None when the root is gone.

    The difference of two readings is the server's CPU in between, even when children come and
    go: a child that exits moves its time from "live" to the root's cutime. Reaping during one
    reading would count that child twice or not at all, so the reading is retried until the
    root's cutime+cstime is the same before and after the children are read."""
    total: float | None = None
    for _ in range(attempts):
        before = _stat(root)
        if before is None or len(before) < 15:
            return None
        live = sum(cpu_seconds(child) or 0.0 for child in children(root))
        after = _stat(root)
        if after is None or len(after) < 15:
            return None
        # utime, stime, cutime, cstime: fields 14-17.
        total = sum(int(v) for v in after[11:15]) / CLOCK_TICKS + live
        if after[13:15] == before[13:15]:
            break
    return total


def children(pid: int) -> list[int]:
    """The process's child processes (from /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(found)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return float(total - idle), float(total)


class ServerWatch(Protocol):
    """A database server read at the start and end of each phase (bench.database.PostgresWatch)."""

    def cpu_seconds(self) -> float | None:
        """The whole server's CPU time so far (None when it cannot be seen from here)."""
        ...

    async def sessions(self) -> int | None:
        """Sessions opened so far on the watched database."""
        ...


# The key of the database server in Usage.cpu_percent and Usage.cpu_seconds.
POSTGRES_SERVER = "postgres server"


@dataclass
class Usage:
    """CPU (percent of one core) and memory of the watched processes over a phase."""

    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    rss_peak_mib: dict[str, float] = field(default_factory=dict)
    rss_end_mib: dict[str, float] = field(default_factory=dict)
    machine_busy_percent: float = float("nan")  # of all cores, everything on the machine
    # Sessions (connections) opened on the scenario's database during the phase.
    postgres_sessions: int | None = None
    seconds: float = 0.0


class Sampler:
    """Watches named processes during a phase: `async with Sampler({...}) as usage: ...`."""

    def __init__(
        self,
        pids: dict[str, int],
        server: ServerWatch | None = None,
        interval: float = 0.25,
    ) -> None:
        self._pids = pids
        # The PostgreSQL server, counted whole (POSTGRES_SERVER), and the scenario's sessions.
        self._server = server
        self._interval = interval
        self.usage = Usage()
        self._task: asyncio.Task[None] | None = None
        self._start_cpu: dict[str, float] = {}
        self._start_server: float | None = None
        self._start_sessions: int | None = None
        self._start_machine = (0.0, 0.0)
        self._start = 0.0

    def _sample_rss(self) -> None:
        for name, pid in self._pids.items():
            rss = rss_mib(pid)
            if rss is not None:
                self.usage.rss_end_mib[name] = rss
                peak = self.usage.rss_peak_mib.get(name, 0.0)
                self.usage.rss_peak_mib[name] = max(peak, rss)

    async def _loop(self) -> None:
        while True:
            self._sample_rss()
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> Usage:
        if self._server is not None:
            # First: the query is a round trip, not part of the phase's time or CPU.
            self._start_sessions = await self._server.sessions()
            self._start_server = self._server.cpu_seconds()
        self._start = time.monotonic()
        self._start_machine = system_cpu()
        for name, pid in self._pids.items():
            self._start_cpu[name] = cpu_seconds(pid) or 0.0
        self._task = asyncio.create_task(self._loop())
        return self.usage

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample_rss()
        elapsed = max(time.monotonic() - self._start, 1e-6)
        self.usage.seconds = elapsed
        for name, pid in self._pids.items():
            end = cpu_seconds(pid)
            if end is not None:
                used = end - self._start_cpu[name]
                self.usage.cpu_seconds[name] = used
                self.usage.cpu_percent[name] = 100.0 * used / elapsed
        busy, total = system_cpu()
        if total > self._start_machine[1]:
            self.usage.machine_busy_percent = (
                100.0 * (busy - self._start_machine[0]) / (total - self._start_machine[1])
            )
        if self._server is not None:
            end_server = self._server.cpu_seconds()
            if end_server is not None and self._start_server is not None:
                used = end_server - self._start_server
                self.usage.cpu_seconds[POSTGRES_SERVER] = used
                self.usage.cpu_percent[POSTGRES_SERVER] = 100.0 * used / elapsed
            end_sessions = await self._server.sessions()
            if end_sessions is not None and self._start_sessions is not None:
                self.usage.postgres_sessions = end_sessions - self._start_sessions


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cwd: Path) -> Child:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    async def wait_log(self, text: str, seconds: float = START_TIMEOUT) -> None:
        """Until `text` appears in the process's log (for processes without HTTP)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if text in self.log_tail(200_000):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} did not log {text!r} in {seconds:.0f} s")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    async def wait_http(self, url: str, seconds: float = START_TIMEOUT) -> None:
        """Until GET url answers 200; fails if the process exits or the time is up."""
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} in {seconds:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


def python_child(name: str, module_args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    """`python -m <module_args>` with this interpreter and the repository importable."""
    full_env = dict(env)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return Child(name, [sys.executable, "-m", *module_args], full_env, log_dir / f"{name}.log")


def clean_env() -> dict[str, str]:
    """The environment without anything that would configure Plática behind our back."""
    prefixes = ("TWILIO_", "OPENAI_", "PLATICA_", "SUPABASE_", "SENTRY_", "LOG_", "RATE_LIMIT_")
    # Plática's defaults are what is measured: no limit or concurrency from the caller's shell.
    # WORKER_CONCURRENCY only as --worker-concurrency sets it: the report says which was used.
    names = {"DATABASE_URL", "PUBLIC_BASE_URL", "CORS_ORIGINS", "WORKER_CONCURRENCY"}
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(prefixes)
        and key not in names
        and not key.endswith(("_DEBUG", "_LOG_LEVEL"))
    }
