"""What Plática logs, as structlog's event dicts, captured in tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class LogEvents(logging.Handler):
    """structlog's events as they reach the standard library's root logger (before rendering)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append(record.msg)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


@contextmanager
def log_events() -> Iterator[LogEvents]:
    """The events logged while the block runs. Enter it after starting any server: creating
    the app resets the root logger's handlers."""
    handler = LogEvents()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
