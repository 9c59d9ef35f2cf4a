"""Per-conversation locks, so one conversation is answered by one worker at a time, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

# The first key of PostgreSQL's two-key advisory locks: ours, not some other application's.
LOCK_NAMESPACE = 0x504C41


class ConversationLocks(Protocol):
    def hold(self, conversation_id: int) -> AbstractAsyncContextManager[bool]:
        """Try to take the conversation's lock; yields whether it was taken (never waits)."""
        ...


class LocalLocks:
    """Within one process (SQLite deployments run every worker in the serving process)."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    @asynccontextmanager
    async def hold(self, conversation_id: int) -> AsyncIterator[bool]:
        if conversation_id in self._held:
            yield False
            return
        self._held.add(conversation_id)
        try:
            yield True
        finally:
            self._held.discard(conversation_id)


class PostgresLocks:
    """PostgreSQL session advisory locks: shared by every process, and released by the server
    when the holder's connection dies, so a killed worker never leaves a conversation stuck."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def hold(self, conversation_id: int) -> AsyncIterator[bool]:
        key = conversation_id & 0x7FFFFFFF
        async with self._engine.connect() as connection:
            taken = bool(
                await connection.scalar(select(func.pg_try_advisory_lock(LOCK_NAMESPACE, key)))
            )
            await connection.commit()
            try:
                yield taken
            finally:
                if taken:
                    # Shielded: a cancelled task must still hand the lock back to the pool clean.
                    await asyncio.shield(self._release(connection, key))

    @staticmethod
    async def _release(connection: object, key: int) -> None:
        from sqlalchemy.ext.asyncio import AsyncConnection

        assert isinstance(connection, AsyncConnection)
        await connection.execute(select(func.pg_advisory_unlock(LOCK_NAMESPACE, key)))
        await connection.commit()
