"""What every step of the reply task shares: its context (settings, database, LLM, sender,
locks) and its retry policy."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.channels.sender import (
    DryRunSender,
    MessageSender,
)
from platica.config import Settings
from platica.db import Database, DriverPool, Tx
from platica.jobs.locks import ConversationLocks
from platica.logging import get_logger
from platica.media.fetch import TwilioMedia
from platica.media.understand import Transcriber
from platica.ratelimit import RateLimits, backoff
from platica.replies.generator import (
    ReplyGenerator,
)

log = get_logger(__name__)


@dataclass
class RetryPolicy:
    """How every retry backs off: exponentially with the attempts counted so far, with jitter.

    A failure is retried within the run after a sleep of at most `max_sleep_in_run`; a longer
    wait hands the conversation back to the queue, due again when it is over.
    """

    llm_attempts: int = 3
    send_attempts_per_run: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_sleep_in_run: float = 5.0
    # A send still failing this long after the reply was stored is given up.
    send_give_up_after: timedelta = timedelta(hours=1)
    # A burst is answered at most this long after its first message, however it goes on.
    max_debounce_wait: float = 10.0
    # The LLM provider's 429s make messages wait (they do not use up attempts) until the oldest
    # of the batch has waited this long; then the fallback.
    llm_patience: timedelta = timedelta(minutes=10)

    def backoff(self, attempt: int) -> float:
        """Exponential, with jitter so a crowd of retries does not arrive together."""
        return backoff(attempt, self.backoff_base, self.backoff_max)


@dataclass
class ReplyContext:
    """Everything the reply task needs, built once per process."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    generator: ReplyGenerator
    sender: MessageSender
    locks: ConversationLocks
    # Sends the replies to simulated messages (the dashboard's simulator): never to a phone.
    dry_run: MessageSender = field(default_factory=DryRunSender)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # The public URL of /webhook/status: PUBLIC_BASE_URL (required with Twilio credentials).
    status_callback: Callable[[], str | None] = lambda: None
    # PostgreSQL: the psycopg pool the reply path's statements go through (db.open_driver_pool).
    driver_pool: DriverPool | None = None
    # Twilio's media, None in dry run (nothing is fetched); the transcriber, None without an LLM.
    media: TwilioMedia | None = None
    transcriber: Transcriber | None = None
    database: Database = field(init=False)
    # The pacing limits (RATE_LIMIT_PER_SENDER, RATE_LIMIT_PER_ACCOUNT), read from `settings`.
    limits: RateLimits = field(init=False)

    def __post_init__(self) -> None:
        self.database = Database(self.sessionmaker, self.driver_pool)
        self.limits = RateLimits(self.settings)

    def transaction(self, *, durable: bool) -> AbstractAsyncContextManager[Tx]:
        """A transaction of the reply path (db.transaction)."""
        return self.database.transaction(durable=durable)


class Again:
    """Sentinel: something was stored; run the loop again to send it and look for more."""


AGAIN = Again()
