"""What operators do to conversations: read, close, take over, reply by hand.

Listings are inbox.py's, built from `views` here. Services flush, never commit; the API route
commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from platica.errors import BadRequest, Conflict, NotFound
from platica.models import (
    Author,
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.outreach.window import OUTSIDE_WINDOW, window_closes_at, window_open
from platica.sms import sms_encoding
from platica.texts import text_for

OPERATOR_NOTE = "answered by an operator"
# An operator's handoff notifies a contact who wrote within this many hours.
HANDOFF_NOTICE_HOURS = 24


@dataclass
class ConversationView:
    conversation: Conversation
    opted_out: bool
    last_message: str | None
    awaiting_reply: bool
    # The contact went over the flood limit (RATE_LIMIT_FLOOD), when, and why.
    flagged_at: datetime | None = None
    flag_reason: str | None = None
    # WhatsApp: when the contact's 24-hour window closes (outreach/window.py).
    window_closes_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        c = self.conversation
        return {
            "id": c.id,
            "account_id": c.account_id,
            "channel": c.channel,
            "contact": c.contact_address,
            "status": c.status,
            "ai_enabled": c.ai_enabled,
            "handoff_until": c.handoff_until,
            "opted_out": self.opted_out,
            "created_at": c.created_at,
            "last_message_at": c.last_message_at,
            "closed_at": c.closed_at,
            "last_message": self.last_message,
            "awaiting_reply": self.awaiting_reply,
            "flagged_at": self.flagged_at,
            "flag_reason": self.flag_reason,
            "parked_at": c.parked_at,
            "parked_error": c.parked_error,
            "window_closes_at": self.window_closes_at,
        }


def _scope(statement: Select[Any], account_id: uuid.UUID | None) -> Select[Any]:
    return (
        statement if account_id is None else statement.where(Conversation.account_id == account_id)
    )


async def views(session: AsyncSession, conversations: list[Conversation]) -> list[ConversationView]:
    """Each conversation with what a listing shows of it: its last message, whether it awaits
    a reply, and its contact's opt-out and flag (three queries, however many conversations).
    A handoff notice is not the last message: the contact still waits for the operator."""
    if not conversations:
        return []
    ids = [c.id for c in conversations]
    latest_ids = (
        select(func.max(Message.id))
        .where(
            Message.conversation_id.in_(ids),
            ~and_(Message.author == Author.system, Message.reply_to_id.is_(None)),
        )
        .group_by(Message.conversation_id)
    )
    latest = {
        m.conversation_id: m
        for m in await session.scalars(select(Message).where(Message.id.in_(latest_ids)))
    }
    contact_ids = {c.contact_id for c in conversations}
    contacts = {
        row.id: row
        for row in await session.execute(
            select(
                Contact.id,
                Contact.opted_out,
                Contact.flagged_at,
                Contact.flag_reason,
                Contact.last_inbound_at,
            ).where(Contact.id.in_(contact_ids))
        )
    }
    built = []
    for conversation in conversations:
        last = latest.get(conversation.id)
        contact = contacts.get(conversation.contact_id)
        built.append(
            ConversationView(
                conversation=conversation,
                opted_out=bool(contact and contact.opted_out),
                flagged_at=contact.flagged_at if contact else None,
                flag_reason=contact.flag_reason if contact else None,
                window_closes_at=window_closes_at(
                    conversation.channel, contact.last_inbound_at if contact else None
                ),
                last_message=last.body if last else None,
                awaiting_reply=bool(
                    last
                    and last.direction == Direction.inbound
                    and last.reply_state == ReplyState.pending
                ),
            )
        )
    return built


async def get_conversation(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID | None, conversation_id: int
) -> Conversation:
    """The conversation, or NotFound — also when it belongs to another account."""
    conversation = await session.scalar(
        _scope(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.channel == channel
            ),
            account_id,
        )
    )
    if not isinstance(conversation, Conversation):
        raise NotFound(f"no {channel.value} conversation {conversation_id}")
    return conversation


async def view(session: AsyncSession, conversation: Conversation) -> ConversationView:
    return (await views(session, [conversation]))[0]


async def history(session: AsyncSession, conversation: Conversation, limit: int) -> list[Message]:
    """The newest `limit` messages, oldest first."""
    rows = await session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation.id)
        .order_by(Message.id.desc())
        .limit(limit)
        .options(selectinload(Message.media))
    )
    return list(reversed(list(rows)))


async def close(session: AsyncSession, conversation: Conversation) -> Conversation:
    """Close it (idempotent); the contact's next message opens a new conversation."""
    if conversation.status != ConversationStatus.closed:
        conversation.status = ConversationStatus.closed
        conversation.closed_at = utcnow()
        await session.flush()
    return conversation


async def _config(session: AsyncSession, conversation: Conversation) -> ChannelConfig:
    config = await session.scalar(
        select(ChannelConfig).where(
            ChannelConfig.account_id == conversation.account_id,
            ChannelConfig.channel == conversation.channel,
        )
    )
    if config is None:
        raise NotFound("this conversation's channel is no longer configured")
    return config


async def hand_off(
    session: AsyncSession, conversation: Conversation, *, notify: bool = False
) -> Conversation:
    """Pause the AI for the channel's handoff_timeout_minutes (or until resumed). With `notify`,
    a contact who is waiting gets the channel's handoff notice (see `_handoff_notice`; the
    caller wakes the runner once committed, to send it)."""
    config = await _config(session, conversation)
    # Only when the AI had the conversation: an operator's second handoff says nothing again.
    notify = notify and conversation.ai_enabled and conversation.status == ConversationStatus.active
    conversation.ai_enabled = False
    conversation.handoff_until = utcnow() + timedelta(minutes=config.handoff_timeout_minutes)
    if notify:
        await _handoff_notice(session, conversation, config)
    await session.flush()
    return conversation


async def hand_off_and_notify(session: AsyncSession, conversation: Conversation) -> Conversation:
    """An operator takes the conversation over: the AI pauses, the contact is told."""
    return await hand_off(session, conversation, notify=True)


async def _handoff_notice(
    session: AsyncSession, conversation: Conversation, config: ChannelConfig
) -> Message | None:
    """The handoff notice, stored for sending, when the contact wrote in the last
    HANDOFF_NOTICE_HOURS and has not opted out (WhatsApp's window is open then too); else None.
    It answers nothing, like an operator's message; a simulated contact's goes nowhere."""
    contact = await session.get(Contact, conversation.contact_id)
    now = utcnow()
    if (
        contact is None
        or contact.opted_out
        or contact.last_inbound_at is None
        or now - contact.last_inbound_at > timedelta(hours=HANDOFF_NOTICE_HOURS)
    ):
        return None
    simulated = await session.scalar(
        select(Message.simulated)
        .where(Message.conversation_id == conversation.id, Message.direction == Direction.inbound)
        .order_by(Message.id.desc())
        .limit(1)
    )
    body = text_for(config, "handoff_message")
    message = Message(
        account_id=conversation.account_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=Direction.outbound,
        author=Author.system,
        body=body,
        media=[],
        status=MessageStatus.pending,
        part=0,
        attempts=0,
        simulated=bool(simulated),
        created_at=now,
        updated_at=now,
    )
    if conversation.channel == Channel.sms:
        message.encoding, message.segments = sms_encoding(body)
    session.add(message)
    conversation.last_message_at = now
    return message


async def resume(session: AsyncSession, conversation: Conversation) -> Conversation:
    """Give the conversation back to the AI, which then answers whatever the contact wrote
    that nobody answered (wake the runner after the commit)."""
    conversation.ai_enabled = True
    conversation.handoff_until = None
    await session.flush()
    return conversation


async def retry(session: AsyncSession, conversation: Conversation) -> Conversation:
    """Unpark a conversation its reply task kept crashing on (idempotent): its crashes are
    forgotten; the caller makes it due (the runner's defer) once committed."""
    if conversation.parked_at is not None or conversation.crash_count:
        conversation.parked_at = None
        conversation.parked_error = None
        conversation.crash_count = 0
        await session.flush()
    return conversation


async def manual_reply(session: AsyncSession, conversation: Conversation, body: str) -> Message:
    """Store an operator's reply for sending (by the worker, like any reply) and pause the AI."""
    if conversation.status != ConversationStatus.active:
        raise Conflict("the conversation is closed; the contact must write again first")
    contact = await session.get(Contact, conversation.contact_id)
    if contact is not None and contact.opted_out:
        raise Conflict("the contact has opted out (STOP); nothing can be sent to them")
    if not window_open(
        conversation.channel, contact.last_inbound_at if contact else None, utcnow()
    ):
        raise Conflict(
            f"more than 24 hours have passed since the contact last wrote (WhatsApp's "
            f"customer-service window; Twilio error {OUTSIDE_WINDOW}): free text cannot reach "
            f"them now. Send an approved template instead: POST /api/whatsapp/messages "
            f'with {{"to", "template", "variables"}}'
        )
    if conversation.channel == Channel.whatsapp and len(body) > 1600:
        raise BadRequest("body is longer than 1600 characters")
    now = utcnow()
    message = Message(
        account_id=conversation.account_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=Direction.outbound,
        author=Author.operator,
        body=body,
        media=[],
        status=MessageStatus.pending,
        part=0,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    if conversation.channel == Channel.sms:
        message.encoding, message.segments = sms_encoding(body)
    session.add(message)
    # What the contact wrote while waiting is answered now, by the operator.
    await session.execute(
        update(Message)
        .where(
            Message.conversation_id == conversation.id,
            Message.direction == Direction.inbound,
            Message.reply_state == ReplyState.pending,
        )
        .values(reply_state=ReplyState.answered, note=OPERATOR_NOTE, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await hand_off(session, conversation)
    conversation.last_message_at = now
    await session.flush()
    return message


async def get_config(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID
) -> ChannelConfig:
    config = await session.scalar(
        select(ChannelConfig).where(
            ChannelConfig.account_id == account_id, ChannelConfig.channel == channel
        )
    )
    if config is None:
        raise NotFound(f"this account has no {channel.value} number configured")
    return config
