"""Outreach test data: WhatsApp conversations whose contact last wrote a given time ago (so
their 24-hour window is open or closed), and templates as a sync from Twilio would store them."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import (
    Author,
    Channel,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    Template,
    TemplateApproval,
    utcnow,
)

REMINDER_SID = "HX" + "a1" * 16
PENDING_SID = "HX" + "b2" * 16
REMINDER = "Hola {{1}}, te recordamos tu cita de mañana a las {{2}}. ¿Nos confirmas?"


async def add_whatsapp_thread(
    session: AsyncSession,
    account_id: uuid.UUID,
    address: str,
    wrote_ago: timedelta | None,
    body: str = "Hola, ¿tienen cita para el jueves?",
    channel: Channel = Channel.whatsapp,
) -> int:
    """A conversation whose contact wrote `wrote_ago` (answered already); None: the contact
    never wrote. Its id."""
    now = utcnow()
    wrote_at = now - wrote_ago if wrote_ago is not None else None
    contact = Contact(account_id=account_id, channel=channel, address=address)
    contact.last_inbound_at = wrote_at
    session.add(contact)
    await session.flush()
    conversation = Conversation(
        account_id=account_id,
        channel=channel,
        contact_id=contact.id,
        contact_address=address,
    )
    session.add(conversation)
    await session.flush()
    if wrote_at is not None:
        session.add(
            Message(
                account_id=account_id,
                conversation_id=conversation.id,
                channel=channel,
                direction=Direction.inbound,
                author=Author.contact,
                body=body,
                status=MessageStatus.received,
                reply_state=ReplyState.answered,
                created_at=wrote_at,
            )
        )
        await session.flush()
    return conversation.id


async def add_template(
    session: AsyncSession,
    account_id: uuid.UUID,
    sid: str = REMINDER_SID,
    name: str = "recordatorio_cita",
    body: str = REMINDER,
    approval: TemplateApproval = TemplateApproval.approved,
) -> Template:
    template = Template(
        account_id=account_id,
        sid=sid,
        name=name,
        language="es",
        body=body,
        variables={"1": "Ana", "2": "10:30"},
        approval=approval,
        synced_at=utcnow(),
    )
    session.add(template)
    await session.flush()
    return template
