"""Abuse limits: inbound messages per sender and per account, API calls per credential.

A message over a limit is still stored and acknowledged (Twilio must not retry it), but it is
marked skipped with the note "rate limited" and never answered: a flood costs no LLM call and
no reply. Only messages within the sender's limit count towards the account's, so one flooding
sender cannot use up the account's allowance and silence everyone else. An API caller over its
limit gets 429 with Retry-After.

The per-sender count lives in the database, on the contact row every inbound message writes
anyway (a fixed window: `contacts.rate_window_start` and `rate_window_count`), so it holds
across every `platica serve` process and costs nothing per sender in memory. The per-account
and per-credential counts live in memory, in moving windows, and are per process: with two
`platica serve` processes an account can get up to twice its limit through. They start empty
when a process starts. The per-credential one is the `limits` library's; the per-account one,
checked and counted on every inbound message, is `MovingWindow` below: `limits`' in-memory
storage starts a thread every 10 ms to expire its entries, which cost the webhook path about 6 %
of its CPU at 300 messages a second.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from platica.config import Settings

RATE_LIMITED_NOTE = "rate limited"
# What "off" means for a limit counted in SQL: more than anyone can send.
UNLIMITED = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SenderWindow:
    """RATE_LIMIT_PER_SENDER as the database applies it: `limit` messages per `seconds`."""

    limit: int
    seconds: int

    def starts_after(self, now: datetime) -> datetime:
        """A window that began at or before this moment is over."""
        return now - timedelta(seconds=self.seconds)

    def next_count(self, start: datetime | None, count: int, now: datetime) -> tuple[datetime, int]:
        """The window after one more message: the same one counting on, or a new one."""
        if start is not None and start > self.starts_after(now):
            return start, count + 1
        return now, 1


class MovingWindow:
    """At most `limit` events per `seconds`, in a moving window, per key, in memory.

    Keeps the moments of each key's last `limit` events: the key is over its limit while the
    oldest of them is still inside the window. Checking and counting are O(1).
    """

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._events: dict[str, deque[float]] = {}

    def over(self, key: str) -> bool:
        events = self._events.get(key)
        if events is None or len(events) < self.limit:
            return False
        return events[0] > time.monotonic() - self.seconds

    def hit(self, key: str) -> None:
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
        events.append(time.monotonic())


def _parse(value: str) -> RateLimitItem | None:
    return None if value == "off" else parse(value)


class RateLimits:
    """One process's limits, read from the settings when it is built."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        sender = _parse(settings.RATE_LIMIT_PER_SENDER)
        self.sender = (
            SenderWindow(sender.amount, sender.get_expiry())
            if sender
            else SenderWindow(UNLIMITED, 1)
        )
        per_account = _parse(settings.RATE_LIMIT_PER_ACCOUNT)
        self._per_account = (
            MovingWindow(per_account.amount, per_account.get_expiry()) if per_account else None
        )
        self._per_credential = _parse(settings.RATE_LIMIT_API)
        # The account that owns each number, as last seen, to check its limit before the
        # database says again (a stale entry only charges the wrong account, briefly).
        self._owners: dict[tuple[str, str], uuid.UUID] = {}

    def account_over(self, account_id: uuid.UUID | None) -> bool:
        """Whether the account has used up its allowance (counts nothing)."""
        if self._per_account is None or account_id is None:
            return False
        return self._per_account.over(str(account_id))

    def count_for_account(self, account_id: uuid.UUID) -> None:
        """Count one message the account's limit let through."""
        if self._per_account is not None:
            self._per_account.hit(str(account_id))

    def owner(self, channel: str, number: str) -> uuid.UUID | None:
        return self._owners.get((channel, number))

    def remember_owner(self, channel: str, number: str, account_id: uuid.UUID) -> None:
        self._owners[(channel, number)] = account_id

    def api(self, credential: str) -> int | None:
        """Count one API call; whole seconds until the caller may call again, or None."""
        if self._per_credential is None:
            return None
        if self._limiter.hit(self._per_credential, "api", credential):
            return None
        reset_at = self._limiter.get_window_stats(self._per_credential, "api", credential)[0]
        return max(math.ceil(reset_at - time.time()), 1)

    @property
    def api_limit(self) -> str:
        return str(self._per_credential) if self._per_credential else "unlimited"
