"""Every query on contacts, conversations and messages; flushes, never commits."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from platica.db import constant, insert_ignore
from platica.models import (
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    status_move,
    utcnow,
)


async def find_channel_config(
    session: AsyncSession, channel: Channel, phone_number: str
) -> ChannelConfig | None:
    """The channel config that owns `phone_number` on `channel`."""
    return await session.scalar(
        select(ChannelConfig).where(
            ChannelConfig.channel == channel, ChannelConfig.phone_number == phone_number
        )
    )


async def message_id_by_sid(session: AsyncSession, sid: str) -> int | None:
    return await session.scalar(select(Message.id).where(Message.twilio_sid == sid))


async def get_or_create_contact(
    session: AsyncSession, account_id: uuid.UUID, channel: Channel, address: str
) -> Contact:
    """The contact, inserted first if new; safe against a concurrent insert of the same one."""
    await session.execute(
        insert_ignore(
            session.get_bind().dialect.name,
            Contact,
            {
                "account_id": account_id,
                "channel": channel,
                "address": address,
                "opted_out": False,
                "created_at": utcnow(),
            },
            index_elements=["account_id", "channel", "address"],
        )
    )
    contact = await session.scalar(
        select(Contact).where(
            Contact.account_id == account_id, Contact.channel == channel, Contact.address == address
        )
    )
    assert contact is not None
    return contact


async def get_or_open_conversation(session: AsyncSession, contact: Contact) -> Conversation:
    """The contact's active conversation, opened if there is none (closed ones stay closed)."""
    active = select(Conversation).where(
        Conversation.contact_id == contact.id, Conversation.status == ConversationStatus.active
    )
    conversation = await session.scalar(active)
    if conversation is not None:
        return conversation
    now = utcnow()
    await session.execute(
        insert_ignore(
            session.get_bind().dialect.name,
            Conversation,
            {
                "account_id": contact.account_id,
                "channel": contact.channel,
                "contact_id": contact.id,
                "contact_address": contact.address,
                "status": ConversationStatus.active,
                "ai_enabled": True,
                "created_at": now,
                "last_message_at": now,
            },
            index_elements=["contact_id"],
            index_where=Conversation.status == constant(ConversationStatus.active),
        )
    )
    conversation = await session.scalar(active)
    assert conversation is not None
    return conversation


async def insert_message(session: AsyncSession, values: dict[str, object]) -> int | None:
    """Insert a message unless its Twilio SID is already stored; its id, or None for a duplicate."""
    now = utcnow()
    statement = insert_ignore(
        session.get_bind().dialect.name,
        Message,
        {"created_at": now, "updated_at": now, "attempts": 0, "part": 0, **values},
        index_elements=["twilio_sid"],
    ).returning(Message.id)
    return (await session.execute(statement)).scalar_one_or_none()


async def touch_conversation(session: AsyncSession, conversation_id: int, at: datetime) -> None:
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.last_message_at < at)
        .values(last_message_at=at)
    )


async def advance_status(
    session: AsyncSession,
    sid: str,
    status: MessageStatus,
    error_code: int | None,
    error_message: str | None,
) -> bool:
    """Move the message with `sid` to `status` if models.status_move allows it; whether it moved."""
    move = status_move(status)
    values: dict[str, object] = {"status": status, "updated_at": utcnow()}
    if move.clears_error:
        values.update(error_code=None, error_message=None)
    else:
        if error_code is not None:
            values["error_code"] = error_code
        if error_message is not None:
            values["error_message"] = error_message
    result = await session.execute(
        update(Message)
        .where(and_(Message.twilio_sid == sid, Message.status.in_(move.replaces)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def message_status_by_sid(session: AsyncSession, sid: str) -> MessageStatus | None:
    status = await session.scalar(select(Message.status).where(Message.twilio_sid == sid))
    return None if status is None else MessageStatus(status)


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
