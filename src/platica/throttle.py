"""Per-process limits on what callers who have not proven who they are can make Plática do.

- Rejected webhooks (a bad signature, a malformed form, a number nobody owns): up to
  REJECTED_WEBHOOK_LOGS of them a minute are written to `webhook_logs` and logged; past that,
  only `platica_webhooks_unlogged_total` counts them, so forged posts cannot fill the disk or
  the logs.
- Failed authentication (a wrong dashboard login, a wrong API credential): FAILED_LOGINS per
  client address; past that the address gets 429 with Retry-After until the window moves on,
  whatever it sends, so credentials cannot be guessed at speed.

The counts are the `limits` library's moving windows in this process's memory (like the API's
limit in ratelimit.py): two `platica serve` processes let twice as much through, and a restart
starts them afresh.
"""

from __future__ import annotations

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from platica.ratelimit import retry_after

REJECTED_WEBHOOK_LOGS = "60/minute"
FAILED_LOGINS = "10/minute"


class Throttle:
    """One process's limits on unauthenticated callers (see the module docstring)."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rejected = parse(REJECTED_WEBHOOK_LOGS)
        self._failed = parse(FAILED_LOGINS)

    def log_rejected_webhook(self) -> bool:
        """Count one rejected webhook; whether it may still be written and logged."""
        return self._limiter.hit(self._rejected, "webhook_rejected")

    def login_retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try to authenticate again; None if it may now."""
        if self._limiter.test(self._failed, "auth_failed", address):
            return None
        return retry_after(self._limiter, self._failed, "auth_failed", address)

    def count_failed_login(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        self._limiter.hit(self._failed, "auth_failed", address)
