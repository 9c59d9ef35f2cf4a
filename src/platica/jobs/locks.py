"""Per-conversation leases, so one worker at a time answers a conversation, in order.

A lease is two columns on the conversation (owner, expiry), taken with one conditional UPDATE
and renewed while the work goes on. It works the same on SQLite and PostgreSQL and across any
number of processes; it holds no database connection while the LLM thinks; and when a worker
dies, its leases simply expire, so no conversation stays stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Protocol

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.db import transaction
from platica.logging import get_logger
from platica.models import Conversation, utcnow

log = get_logger(__name__)

LEASE_SECONDS = 15.0


class ConversationLocks(Protocol):
    def hold(self, conversation_id: int) -> AbstractAsyncContextManager[bool]:
        """Try to take the conversation's lock; yields whether it was taken (never waits)."""
        ...


class LeaseLocks:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], lease_seconds: float = LEASE_SECONDS
    ) -> None:
        self._sessionmaker = sessionmaker
        self._lease = timedelta(seconds=lease_seconds)

    async def _take(self, conversation_id: int, owner: str) -> bool:
        now = utcnow()
        async with transaction(self._sessionmaker) as session:
            result = await session.execute(
                update(Conversation)
                .where(
                    Conversation.id == conversation_id,
                    or_(
                        Conversation.lease_expires_at.is_(None),
                        Conversation.lease_expires_at < now,
                    ),
                )
                .values(lease_owner=owner, lease_expires_at=now + self._lease)
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _renew(self, conversation_id: int, owner: str) -> None:
        """Extend the lease every third of its length for as long as the work lasts."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with transaction(self._sessionmaker) as session:
                    await session.execute(
                        update(Conversation)
                        .where(
                            Conversation.id == conversation_id, Conversation.lease_owner == owner
                        )
                        .values(lease_expires_at=utcnow() + self._lease)
                        .execution_options(synchronize_session=False)
                    )
            except Exception:
                # The next renewal may succeed; if none does, the lease lapses, as for a crash.
                log.warning("lease.renew_failed", conversation_id=conversation_id, exc_info=True)

    async def _release(self, conversation_id: int, owner: str) -> None:
        async with transaction(self._sessionmaker) as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    @asynccontextmanager
    async def hold(self, conversation_id: int) -> AsyncIterator[bool]:
        owner = uuid.uuid4().hex
        if not await self._take(conversation_id, owner):
            yield False
            return
        renewal = asyncio.create_task(self._renew(conversation_id, owner), name="lease-renewal")
        try:
            yield True
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            # Shielded: a cancelled task still hands its lease back.
            await asyncio.shield(self._release(conversation_id, owner))
