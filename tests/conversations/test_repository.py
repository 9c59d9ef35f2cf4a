"""What the sweeper finds (jobs/queue.py's NEEDING_WORK) in an ORM session, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica import db
from platica.jobs import queue
from platica.models import (
    Account,
    Author,
    Channel,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = db.create_engine(database_url)
    sessionmaker = db.create_sessionmaker(engine)
    try:
        async with sessionmaker() as session:
            yield session
    finally:
        await engine.dispose()


async def held_conversation(session: AsyncSession, handoff_until: datetime | None) -> int:
    """A conversation an operator took over, with a message of the contact's waiting."""
    account = Account(name="Panadería")
    session.add(account)
    await session.flush()
    contact = Contact(account_id=account.id, channel=Channel.sms, address="+34600111333")
    session.add(contact)
    await session.flush()
    conversation = Conversation(
        account_id=account.id,
        channel=Channel.sms,
        contact_id=contact.id,
        contact_address=contact.address,
        ai_enabled=False,
        handoff_until=handoff_until,
    )
    session.add(conversation)
    await session.flush()
    session.add(
        Message(
            account_id=account.id,
            conversation_id=conversation.id,
            channel=Channel.sms,
            direction=Direction.inbound,
            author=Author.contact,
            body="¿Hay alguien?",
            media=[],
            status=MessageStatus.received,
            reply_state=ReplyState.pending,
            created_at=utcnow() - timedelta(minutes=5),
        )
    )
    await session.flush()
    return conversation.id


async def needing_work(session: AsyncSession) -> list[int]:
    """What the sweeper finds now (jobs/queue.py), in the session's transaction."""
    now = utcnow()
    rows = await session.execute(queue.NEEDING_WORK, {"older_than": now, "now": now})
    return [row.id for row in rows]


class TestConversationsNeedingWork:
    async def test_a_message_waiting_for_the_operator_is_not_swept(self, session):
        await held_conversation(session, utcnow() + timedelta(minutes=30))

        assert await needing_work(session) == []

    async def test_when_the_handoff_lapses_the_ai_gets_what_waited(self, session):
        """Issue 12's defect 7, for a handoff that runs out rather than an operator's Resume."""
        conversation_id = await held_conversation(session, utcnow() - timedelta(seconds=1))

        assert await needing_work(session) == [conversation_id]
