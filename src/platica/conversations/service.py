"""Conversation services the operators' tools use (the CLI's simulate); flushes, never commits.

Recording inbound messages and statuses is the webhooks' own statements' (channels/inbound.py,
channels/postgresql.py, conversations/statuses.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platica.conversations import repository
from platica.models import Message, MessageStatus, ReplyState


async def find_reply(session: AsyncSession, sid: str) -> str | None:
    """How the inbound message `sid` was answered, in words, once its reply is settled."""
    inbound = await session.scalar(select(Message).where(Message.twilio_sid == sid))
    if inbound is None or inbound.reply_state in (None, ReplyState.pending):
        return None
    if inbound.reply_state == ReplyState.skipped:
        return f"Not answered: {inbound.note or 'skipped'}"
    parts = await repository.reply_parts(session, inbound)
    if not parts or any(p.status in (MessageStatus.pending, MessageStatus.sending) for p in parts):
        return None
    lines = []
    for part in parts:
        state = f"{part.status}" if part.error_code is None else f"{part.status} {part.error_code}"
        lines.append(f"Reply ({state}): {part.body}")
    return "\n".join(lines)
