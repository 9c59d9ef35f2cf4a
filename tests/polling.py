"""Waiting for background work in tests: poll with a deadline, never sleep a fixed time.
`wait_for` from sync tests, `eventually` from async ones (which must not block the event loop
the work runs on)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.01


def wait_for(condition: Callable[[], Any], what: str, seconds: float = DEADLINE_SECONDS) -> Any:
    """Poll until `condition()` is truthy and return it; fail naming `what` at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


async def eventually(
    probe: Callable[[], Awaitable[Any]] | Callable[[], Any],
    what: str,
    *,
    holds: Callable[[Any], object] = bool,
    seconds: float = DEADLINE_SECONDS,
) -> Any:
    """Poll `probe()` (awaited if it returns an awaitable: a query, say) until `holds` its
    value (by default: until it is truthy) and return the value; fail naming `what`, and the
    last value unless it was a bare bool, at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if holds(value):
            return value
        if time.monotonic() > deadline:
            last = "" if isinstance(value, bool) else f" (last: {value!r})"
            pytest.fail(f"timed out waiting for {what}{last}")
        await asyncio.sleep(POLL_SECONDS)
