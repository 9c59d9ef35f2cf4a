"""Limits: how fast the AI answers (pacing), a hard flood limit per sender, and the API's
allowance per credential.

Pacing never leaves a message unanswered. A conversation over a pace keeps its messages
pending and is answered once the pace allows, together with whatever the contact wrote
meanwhile (in order, like a debounced burst):

- RATE_LIMIT_PER_SENDER (default 20/minute): AI replies per conversation, counted from the
  replies stored in it (debounce already merges a burst of short messages into one reply, so
  this only binds a contact who keeps the AI busy nonstop).
- RATE_LIMIT_PER_ACCOUNT (default off): AI replies per account, counted on the account row
  (`accounts.reply_pace_at`, see `Pace`), so it holds across every process. Off by default:
  the LLM provider's own limits (its 429s with Retry-After) already pace the calls, and a
  channel's `daily_token_budget` bounds what it costs.

Only the flood limit, RATE_LIMIT_FLOOD (default 120 messages a minute, far above any human
typing rate), leaves messages unanswered: a message over it is stored and acknowledged (Twilio
must not retry it), marked skipped with a note, never shown to the LLM, and its contact is
flagged for the operators. It is counted on the contact row every inbound message writes anyway
(`contacts.rate_window_start`, `rate_window_count`: a fixed window), so it holds across
processes and costs nothing per sender in memory.

An API caller over RATE_LIMIT_API gets 429 with Retry-After (per process, with the `limits`
library).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from platica.config import Settings

FLOOD_NOTE = "flood: over RATE_LIMIT_FLOOD, not answered"
FLOOD_FLAG = "sent more than RATE_LIMIT_FLOOD allows"
# What "off" means for a limit counted in SQL: more than anyone can send.
UNLIMITED = 2**31 - 1


def backoff(attempt: int, base: float, ceiling: float) -> float:
    """Seconds to wait before the `attempt`th retry: exponential from `base` up to `ceiling`,
    with jitter so that what failed together does not come back together."""
    delay: float = min(base * 2 ** max(attempt - 1, 0), ceiling)
    return delay * random.uniform(0.75, 1.0)


def retry_after(limiter: MovingWindowRateLimiter, item: RateLimitItem, *identifiers: str) -> int:
    """Whole seconds (at least 1) until `item`'s window for `identifiers` has room again."""
    reset_at = limiter.get_window_stats(item, *identifiers)[0]
    return max(math.ceil(reset_at - time.time()), 1)


@dataclass(frozen=True, slots=True)
class Window:
    """A limit as a fixed window the database counts in: `limit` events per `seconds`."""

    limit: int
    seconds: int

    def starts_after(self, now: datetime) -> datetime:
        """A window that began at or before this moment is over."""
        return now - timedelta(seconds=self.seconds)

    def next_count(self, start: datetime | None, count: int, now: datetime) -> tuple[datetime, int]:
        """The window after one more event: the same one counting on, or a new one."""
        if start is not None and start > self.starts_after(now):
            return start, count + 1
        return now, 1


@dataclass(frozen=True, slots=True)
class Pace:
    """At most `limit` replies per `seconds`, as a generic cell rate (GCRA).

    The state is one moment, `paced_at`: when the next reply would be due if replies had come
    at exactly the limit's pace. A reply may go now while that moment is at most
    `seconds - interval` ahead (a burst of `limit` at once, then one every `interval`).
    """

    limit: int
    seconds: float

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.seconds / self.limit)

    def wait_after(self, nth_latest: datetime | None, now: datetime) -> float:
        """Seconds to wait, as a moving window, given when the `limit`th latest reply went
        (None: fewer than `limit` so far); 0 when a reply may go now."""
        if nth_latest is None:
            return 0.0
        return max((nth_latest + timedelta(seconds=self.seconds) - now).total_seconds(), 0.0)

    def take(self, paced_at: datetime | None, now: datetime) -> tuple[datetime | None, float]:
        """(the new `paced_at`, 0) when a reply may go now; (None, seconds to wait) when not."""
        due = max(paced_at or now, now)
        ahead = (due - now).total_seconds()
        tolerance = self.seconds - self.interval.total_seconds()
        if ahead > tolerance:
            return None, ahead - tolerance
        return due + self.interval, 0.0


def _parse(value: str) -> RateLimitItem | None:
    return None if value == "off" else parse(value)


def _window(value: str) -> Window:
    item = _parse(value)
    return Window(item.amount, item.get_expiry()) if item else Window(UNLIMITED, 1)


def _pace(value: str) -> Pace | None:
    item = _parse(value)
    return Pace(item.amount, float(item.get_expiry())) if item else None


class RateLimits:
    """The limits of one process, read from the settings when it is built."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.flood = _window(settings.RATE_LIMIT_FLOOD)
        self.per_sender = _pace(settings.RATE_LIMIT_PER_SENDER)
        self.per_account = _pace(settings.RATE_LIMIT_PER_ACCOUNT)
        self._per_credential = _parse(settings.RATE_LIMIT_API)

    def api(self, credential: str) -> int | None:
        """Count one API call; whole seconds until the caller may call again, or None."""
        if self._per_credential is None:
            return None
        if self._limiter.hit(self._per_credential, "api", credential):
            return None
        return retry_after(self._limiter, self._per_credential, "api", credential)

    @property
    def api_limit(self) -> str:
        return str(self._per_credential) if self._per_credential else "unlimited"
