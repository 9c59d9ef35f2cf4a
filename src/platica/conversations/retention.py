"""Retention: close idle conversations, delete what is older than an account keeps.

`cleanup()` is run by hand with `platica cleanup --days N`, and once a day by every process that
works (`DailyCleanup`, started next to the sweeper). What it does:

- closes active conversations with no message for `idle_days` days (the next message from that
  contact opens a new conversation);
- deletes the messages of each account older than its `retention_days`; an account without
  one (the default) keeps its messages. Messages still in the reply pipeline (an inbound message
  waiting for its reply, a reply not yet handed to Twilio) are never deleted. Contacts (their
  opt-out state must outlive their messages) and conversations are kept;
- deletes webhook log entries older than WEBHOOK_LOG_DAYS (30), or than their account's
  retention when that is shorter: a log entry holds the message's form fields, body included,
  so it must not outlive the message. Entries with no account (status callbacks, refused
  requests) follow the 30 days. The log is for debugging and replaying recent deliveries, and
  30 days covers both, whatever an account keeps.

Several processes can share a PostgreSQL database. Each schedules the run for CLEANUP_HOUR_UTC,
and a transaction-level advisory lock lets only one run at a time: the others skip. Every
scheduled run of one day uses the same reference time (that day's CLEANUP_HOUR_UTC), so a
second run on the same day, say by a process that woke late or restarted, finds nothing left
to do. A process that starts also catches up on the last scheduled run (after
CLEANUP_FIRST_DELAY_SECONDS), in case no process was up at that hour.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.db import session as db_session
from platica.logging import get_logger
from platica.models import (
    Account,
    Conversation,
    ConversationStatus,
    Message,
    MessageStatus,
    ReplyState,
    WebhookLog,
    utcnow,
)

log = get_logger(__name__)

# SPEC §2 has no variable for these: `platica cleanup --days N` overrides the idle days.
DEFAULT_IDLE_DAYS = 30
WEBHOOK_LOG_DAYS = 30
# Night in the Americas, early morning in Europe.
CLEANUP_HOUR_UTC = 8
CLEANUP_FIRST_DELAY_SECONDS = 300.0
LOCK_NAME = "platica.cleanup"


@dataclass(frozen=True, slots=True)
class CleanupReport:
    closed_conversations: int
    deleted_messages: int
    deleted_webhook_logs: int


def _count(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


async def cleanup(
    session: AsyncSession, *, idle_days: int, now: datetime | None = None
) -> CleanupReport:
    """Close conversations idle for `idle_days`, delete messages and webhook logs past their
    retention (see the module's docstring); flushes, never commits."""
    if idle_days < 1:
        raise ValueError(f"idle_days must be at least 1, not {idle_days}")
    now = now or utcnow()
    closed = _count(
        await session.execute(
            update(Conversation)
            .where(
                Conversation.status == ConversationStatus.active,
                Conversation.last_message_at < now - timedelta(days=idle_days),
            )
            .values(status=ConversationStatus.closed, closed_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    deleted_logs = _count(
        await session.execute(
            delete(WebhookLog)
            .where(WebhookLog.received_at < now - timedelta(days=WEBHOOK_LOG_DAYS))
            .execution_options(synchronize_session=False)
        )
    )
    deleted_messages = 0
    accounts = await session.execute(
        select(Account.id, Account.retention_days).where(Account.retention_days >= 1)
    )
    for account_id, days in accounts.all():
        assert days is not None  # (the query says so)
        cutoff = now - timedelta(days=days)
        deleted_messages += _count(
            await session.execute(
                delete(Message)
                .where(
                    Message.account_id == account_id,
                    Message.created_at < cutoff,
                    # Still in the reply pipeline: leave it to finish.
                    or_(Message.reply_state.is_(None), Message.reply_state != ReplyState.pending),
                    Message.status.not_in([MessageStatus.pending, MessageStatus.sending]),
                )
                .execution_options(synchronize_session=False)
            )
        )
        if days < WEBHOOK_LOG_DAYS:
            deleted_logs += _count(
                await session.execute(
                    delete(WebhookLog)
                    .where(WebhookLog.account_id == account_id, WebhookLog.received_at < cutoff)
                    .execution_options(synchronize_session=False)
                )
            )
    await session.flush()
    return CleanupReport(
        closed_conversations=closed,
        deleted_messages=deleted_messages,
        deleted_webhook_logs=deleted_logs,
    )


async def run_cleanup(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    idle_days: int = DEFAULT_IDLE_DAYS,
    now: datetime | None = None,
) -> CleanupReport | None:
    """`cleanup()` in a transaction of its own; None when another process is running it."""
    async with db_session(sessionmaker) as session:
        if session.get_bind().dialect.name == "postgresql":
            taken = await session.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:name))"), {"name": LOCK_NAME}
            )
            if not taken:
                return None
        # (SQLite: BEGIN IMMEDIATE already makes writers take turns.)
        return await cleanup(session, idle_days=idle_days, now=now)


def last_scheduled_run(at: datetime) -> datetime:
    """The latest CLEANUP_HOUR_UTC at or before `at`: the reference time of that day's run."""
    slot = at.replace(hour=CLEANUP_HOUR_UTC, minute=0, second=0, microsecond=0)
    return slot if slot <= at else slot - timedelta(days=1)


async def _sleep_until(moment: datetime) -> None:
    """Sleep until `moment` by the wall clock, looking again every 10 minutes: asyncio's
    clock stops while the machine is suspended, and the wall clock may be corrected."""
    while True:
        remaining = (moment - utcnow()).total_seconds()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, 600.0))


class DailyCleanup:
    """Runs `cleanup()` every day at CLEANUP_HOUR_UTC in a working process."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        idle_days: int = DEFAULT_IDLE_DAYS,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._idle_days = idle_days
        self._task: asyncio.Task[None] | None = None

    async def run(self, at: datetime | None = None) -> CleanupReport | None:
        """The run scheduled last before `at` (default: now); None if it was not done here."""
        reference = last_scheduled_run(at or utcnow())
        try:
            report = await run_cleanup(self._sessionmaker, idle_days=self._idle_days, now=reference)
        except Exception:
            log.exception("cleanup.failed")
            return None
        if report is None:
            log.info("cleanup.skipped", reason="another process is running it")
            return None
        log.info(
            "cleanup.done",
            reference=reference.isoformat(),
            closed_conversations=report.closed_conversations,
            deleted_messages=report.deleted_messages,
            deleted_webhook_logs=report.deleted_webhook_logs,
        )
        return report

    async def _loop(self, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            now = utcnow()
            await self.run(now)
            due = last_scheduled_run(now) + timedelta(days=1)
            await _sleep_until(due)

    async def start(self, first_delay: float = CLEANUP_FIRST_DELAY_SECONDS) -> None:
        self._task = asyncio.create_task(self._loop(first_delay), name="daily-cleanup")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
