"""`platica serve`'s worker as a child process: lower CPU priority, restarted when it dies,
stopped after the server, and killed by the kernel when the server is killed.

Why a child (PostgreSQL only; SQLite has one writer, so its worker stays in the server): a reply's
CPU work would otherwise run on the event loop that acknowledges webhooks, and one Python process
only ever uses one core. At a higher niceness the kernel always prefers the process that must
answer Twilio quickly, and the replies use the other core.

The child runs `python -m MODULE SERVE_PID` (`child_command`), a module that calls `run_child`
below: it asks to die with the server, then runs the worker it was given in that same process.
`platica serve` names the module (platica/cli/child.py), so nothing here imports the command line.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from platica.logging import get_logger

log = get_logger(__name__)

NICENESS = 10  # added to the server's own
STOP_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long is restarted after the first backoff again
PARENT_POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_command(module: str) -> list[str]:
    """The child's command line: `module` run by this interpreter in this environment, told who
    its parent is (the module passes its arguments to `run_child`)."""
    return [sys.executable, "-m", module, str(os.getpid())]


class Backoff:
    """Seconds to wait before restarting a child: doubling up to a ceiling, and back to the
    first wait once a child has run for a while."""

    def __init__(self, first: float, most: float, stable_seconds: float) -> None:
        self.first, self.most, self.stable_seconds = first, most, stable_seconds
        self._next = first

    def after(self, ran_seconds: float) -> float:
        """The wait after a child that ran `ran_seconds` (0: it could not be started)."""
        if ran_seconds >= self.stable_seconds:
            self._next = self.first
        wait, self._next = self._next, min(self._next * 2, self.most)
        return wait


class WorkerSupervisor:
    """Keeps one child process running until `stop()`, restarting it with a bounded backoff.

    One thread starts, waits for (so no zombie is left) and restarts every child. On Linux
    that matters: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and this
    one lives until the child has exited.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        stable_seconds: float = STABLE_SECONDS,
        stop_seconds: float = STOP_SECONDS,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._command = list(command)
        # Told each child's pid once it has exited (and been reaped).
        self._on_exit = on_exit
        self._backoff = Backoff(first_backoff, max_backoff, stable_seconds)
        self._stop_seconds = stop_seconds
        # Held while starting a child and while deciding to stop, so `stop()` either sees the
        # new child or the thread sees the stop and starts none.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first_started = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        # A daemon: should serve die without calling stop(), the thread must not keep it alive.
        self._thread = threading.Thread(
            target=self._supervise, name="worker-supervisor", daemon=True
        )

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between a death and its restart)."""
        with self._lock:
            return None if self._process is None else self._process.pid

    def start(self) -> int | None:
        """Start the first child; its pid (None if it could not be started: retried, logged)."""
        self._thread.start()
        self._first_started.wait()
        return self.pid

    def stop(self) -> int | None:
        """SIGTERM the child, SIGKILL it if it is still there after `stop_seconds`, reap it;
        its exit status."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if self._thread.ident is None:
            return None
        if process is not None:
            log.info("worker.stopping", pid=process.pid)
            process.terminate()  # a no-op if it has already been reaped
        self._thread.join(self._stop_seconds)
        if self._thread.is_alive() and process is not None:
            log.warning("worker.killed", pid=process.pid, after_seconds=self._stop_seconds)
            process.kill()
            self._thread.join()
        return None if process is None else process.returncode

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        try:
            # Its own process group: a Ctrl-C at the terminal reaches serve only, which stops
            # the worker itself, after the HTTP side has drained. Same session, same environment,
            # same stdout/stderr (one log). No preexec_fn: forking with threads running and then
            # running Python before exec can deadlock; the child sets itself up instead (`main`).
            process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, process_group=0)
        except OSError as error:
            log.error("worker.start_failed", error=str(error))
            return None
        # From here rather than from the child: it takes a second or two to import Plática.
        niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + NICENESS, 19)
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, niceness)
        except OSError as error:  # it died already: the supervising loop will see it
            log.warning("worker.renice_failed", pid=process.pid, error=str(error))
        log.info("worker.started", pid=process.pid, niceness=niceness)
        return process

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping.is_set():
                    break
                self._process = process = self._spawn()
            self._first_started.set()
            ran = 0.0 if process is None else self._wait(process)
            if process is not None and self._on_exit is not None:
                self._on_exit(process.pid)
            if self._stopping.is_set():
                if process is not None:
                    log.info("worker.stopped", pid=process.pid, returncode=process.returncode)
                break
            wait = self._backoff.after(ran)
            if process is not None:
                log.warning(
                    "worker.exited",
                    pid=process.pid,
                    returncode=process.returncode,
                    ran_seconds=round(ran, 1),
                    restart_in_seconds=wait,
                )
            if self._stopping.wait(wait):
                break
        self._first_started.set()

    def _wait(self, process: subprocess.Popen[bytes]) -> float:
        """Wait for the child to exit and reap it; how long it ran (roughly)."""
        started = time.monotonic()
        process.wait()
        with self._lock:
            self._process = None
        return time.monotonic() - started


def _die_with_parent() -> bool:
    """Linux: have the kernel SIGKILL this process when its parent dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    return result == 0


def watch_parent(
    parent: int, on_orphaned: Callable[[], None], interval: float = PARENT_POLL_SECONDS
) -> threading.Thread:
    """Elsewhere: a thread that calls `on_orphaned` once this process's parent is no longer
    `parent` (the parent died and the process was adopted)."""

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                on_orphaned()
                return

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _stop_orphan() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the worker stops gracefully on it
    time.sleep(STOP_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def run_child(argv: Sequence[str], run_worker: Callable[[], object], *, prog: str) -> int:
    """The child's side: `argv` is SERVE_PID (`child_command`); `run_worker` is what it runs
    once it will die with the server. Its exit status (2: usage, 1: the server is gone)."""
    if len(argv) != 1 or not argv[0].isdigit():
        sys.stderr.write(f"usage: {prog} SERVE_PID (`platica serve` runs it)\n")
        return 2
    parent = int(argv[0])
    if not _die_with_parent():
        watch_parent(parent, _stop_orphan)
    # The server may have died before we asked (`-m` imported Plática first, a second or two):
    # then nothing would ever stop this process.
    if os.getppid() != parent:
        return 1
    run_worker()
    return 0
