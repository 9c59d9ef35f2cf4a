"""Recording inbound messages and delivery statuses; flushes, never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platica.channels.parsing import InboundMessage, StatusUpdate
from platica.conversations import repository
from platica.models import (
    FINAL_STATUSES,
    Author,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE, Window


@dataclass(frozen=True, slots=True)
class Recorded:
    message_id: int
    conversation_id: int
    # Over the sender's flood limit: stored, never answered (the contact is flagged).
    flooded: bool = False


class StatusOutcome(StrEnum):
    updated = "updated"
    stale = "stale"  # an older status arrived after a newer one; ignored
    unknown = "unknown"  # no message has this SID
    ignored = "ignored"  # the message's status is final (failed): nothing changes it


async def record_inbound(
    session: AsyncSession,
    inbound: InboundMessage,
    account_id: uuid.UUID,
    *,
    flood: Window | None = None,
) -> Recorded | None:
    """Store an inbound message once, in its contact's active conversation.

    Returns the new message and its conversation, or None when its MessageSid is already stored (a repeated
    delivery). The caller should roll back on None: the transaction may have touched the
    contact and conversation for nothing. A message over the sender's `flood` window (counted
    on the contact) is stored as skipped, never answered, and the contact is flagged.
    channels/inbound.py does the same in one statement on PostgreSQL.
    """
    if await repository.message_id_by_sid(session, inbound.sid) is not None:
        return None
    contact = await repository.get_or_create_contact(
        session, account_id, inbound.channel, inbound.sender
    )
    now = utcnow()
    contact.last_inbound_at = now
    if inbound.profile_name:
        contact.profile_name = inbound.profile_name[:200]
    if inbound.wa_id:
        contact.wa_id = inbound.wa_id[:64]
    flooded = False
    if flood is not None:
        contact.rate_window_start, contact.rate_window_count = flood.next_count(
            contact.rate_window_start, contact.rate_window_count, now
        )
        if contact.rate_window_count > flood.limit:
            flooded = True
            contact.flagged_at, contact.flag_reason = now, FLOOD_FLAG
    # Rows are locked in one order everywhere (contact, conversation, messages), so concurrent
    # transactions on PostgreSQL wait for each other instead of deadlocking.
    await session.flush()
    conversation = await repository.get_or_open_conversation(session, contact)
    message_id = await repository.insert_message(
        session,
        {
            "account_id": account_id,
            "conversation_id": conversation.id,
            "channel": inbound.channel,
            "direction": Direction.inbound,
            "author": Author.contact,
            "body": inbound.body,
            "media": [{"url": m.url, "content_type": m.content_type} for m in inbound.media],
            "twilio_sid": inbound.sid,
            "status": MessageStatus.received,
            "simulated": inbound.simulated,
            "reply_state": ReplyState.skipped if flooded else ReplyState.pending,
            "note": FLOOD_NOTE if flooded else None,
            "created_at": now,
            "updated_at": now,
        },
    )
    if message_id is None:
        return None
    await repository.touch_conversation(session, conversation.id, now)
    await session.flush()
    return Recorded(message_id=message_id, conversation_id=conversation.id, flooded=flooded)


async def record_status(session: AsyncSession, update: StatusUpdate) -> StatusOutcome:
    """Apply a delivery status callback; statuses only move forward."""
    moved = await repository.advance_status(
        session, update.sid, update.status, update.error_code, update.error_message
    )
    if moved:
        return StatusOutcome.updated
    current = await repository.message_status_by_sid(session, update.sid)
    if current is None:
        return StatusOutcome.unknown
    return StatusOutcome.ignored if current in FINAL_STATUSES else StatusOutcome.stale


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
