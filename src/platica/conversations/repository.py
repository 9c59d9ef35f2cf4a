"""Queries on conversations and messages for the operators' tools; flushes, never commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import (
    Direction,
    Message,
)


async def reply_parts(session: AsyncSession, inbound: Message) -> list[Message]:
    """The parts of the reply that answered `inbound` (alone or in a burst), in order."""
    answered_by = await session.scalar(
        select(func.min(Message.reply_to_id)).where(
            Message.conversation_id == inbound.conversation_id,
            Message.direction == Direction.outbound,
            Message.reply_to_id >= inbound.id,
        )
    )
    if answered_by is None:
        return []
    rows = await session.scalars(
        select(Message)
        .where(Message.reply_to_id == answered_by, Message.direction == Direction.outbound)
        .order_by(Message.part)
    )
    return list(rows)
