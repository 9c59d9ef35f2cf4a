"""Abuse limits: inbound messages per sender and per account, API calls per credential.

A message over a limit is still stored and acknowledged (Twilio must not retry it), but it is
marked skipped with the note "rate limited" and never answered: a flood costs no LLM call and
no reply. Only messages within the sender's limit count towards the account's, so one flooding
sender cannot use up the account's allowance and silence everyone else. An API caller over its
limit gets 429 with Retry-After.

The counts live in memory (the `limits` library's moving windows) and are per process: with
two `platica serve` processes, a sender can get up to twice the limit through. They start empty
when a process starts.
"""

from __future__ import annotations

import math
import time
import uuid

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

# SPEC §2 has no variables for these; constants, like the other operational bounds.
INBOUND_PER_SENDER = "20/minute"
INBOUND_PER_ACCOUNT = "600/minute"
API_PER_CREDENTIAL = "120/minute"

RATE_LIMITED_NOTE = "rate limited"


class RateLimits:
    """One process's limits (read from the constants above when it is built)."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_sender: RateLimitItem = parse(INBOUND_PER_SENDER)
        self._per_account: RateLimitItem = parse(INBOUND_PER_ACCOUNT)
        self._per_credential: RateLimitItem = parse(API_PER_CREDENTIAL)

    def inbound(self, account_id: uuid.UUID, channel: str, sender: str) -> str | None:
        """Count one inbound message; which limit it is over ("sender", "account"), or None."""
        if not self._limiter.hit(self._per_sender, "sender", str(account_id), channel, sender):
            return "sender"
        if not self._limiter.hit(self._per_account, "account", str(account_id)):
            return "account"
        return None

    def api(self, credential: str) -> int | None:
        """Count one API call; whole seconds until the caller may call again, or None."""
        if self._limiter.hit(self._per_credential, "api", credential):
            return None
        reset_at = self._limiter.get_window_stats(self._per_credential, "api", credential)[0]
        return max(math.ceil(reset_at - time.time()), 1)

    @property
    def api_limit(self) -> str:
        return str(self._per_credential)
