"""Requests first, in a process that answers messages itself (`platica serve` on SQLite).

On PostgreSQL the worker is a child process at a lower CPU priority: the kernel gives the
webhooks the CPU first. On SQLite the reply tasks share the server's event loop, which runs, in
each of its turns, every callback that is ready: a few hundred reply steps woken together would
each run before a webhook that arrived meanwhile is even read. So reply tasks take turns:

- before each of their transactions (db.transaction) and before a task starts, a reply task
  waits while a request is being served;
- and only one such step starts per turn of the event loop, so that a request arriving finds
  at most one step ahead of it;
- while requests keep coming without a pause, a step still starts every `STARVE_SECONDS`, so
  that replies never stop (like the PostgreSQL worker's lower priority, not a ban).

What a task runs between two of these points (reading an LLM's answer, say) is not cut short.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

# While requests are served without a pause, a waiting reply step starts at least this often.
STARVE_SECONDS = 0.02


class Turns:
    """The turns of the process's background work (see the module's docstring). One per
    process, on one event loop: the first `wait` binds it."""

    def __init__(self, starve_seconds: float = STARVE_SECONDS) -> None:
        self._starve_seconds = starve_seconds
        self._serving = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        # A step started in this turn of the event loop; the next turn clears it.
        self._stepped = False
        self._last_step = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def serving(self) -> int:
        """Requests being served now."""
        return self._serving

    def request_started(self) -> None:
        self._serving += 1

    def request_done(self) -> None:
        self._serving -= 1
        if not self._serving:
            self._release()

    async def wait(self) -> None:
        """Return when this background step may run."""
        if not self._serving and not self._waiting and not self._stepped:
            self._step()
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._release()
        await turn

    def _step(self) -> None:
        self._stepped = True
        self._last_step = time.monotonic()
        asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        self._stepped = False
        self._release()

    def _release(self) -> None:
        """Let the next waiting step run, if it may now."""
        waiting = self._waiting
        while waiting and waiting[0].done():
            waiting.popleft()  # cancelled while it waited
        if not waiting or self._stepped:
            return  # the next turn of the loop looks again
        if self._serving:
            starved = time.monotonic() - self._last_step
            if starved < self._starve_seconds:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._starve_seconds - starved, self._starved
                    )
                return
        waiting.popleft().set_result(None)
        self._step()

    def _starved(self) -> None:
        self._timer = None
        self._release()


class RequestsFirst:
    """ASGI middleware: counts the HTTP requests being served, for `Turns`."""

    def __init__(self, app: ASGIApp, turns: Turns) -> None:
        self.app = app
        self.turns = turns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Not the lifespan (it lasts as long as the server) nor a websocket.
        counted = scope["type"] == "http"
        if counted:
            self.turns.request_started()
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.turns.request_done()
