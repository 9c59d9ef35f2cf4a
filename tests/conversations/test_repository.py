"""conversations/repository.py's status rule through the ORM (the webhook's path on SQLite), on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from platica import db
from platica.conversations import repository
from platica.jobs import queue
from platica.models import (
    Direction,
    MessageStatus,
    utcnow,
)
from tests.factories import new_sid
from tests.records import add_account, add_conversation, add_message, open_engine


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    async with open_engine(database_url) as engine, db.create_sessionmaker(engine)() as session:
        yield session


async def seed(session: AsyncSession) -> str:
    """An outbound message with a SID, queued at Twilio."""
    account = await add_account(session)
    conversation = await add_conversation(session, account.id, "+34600111222")
    sid = new_sid()
    await add_message(
        session, conversation, Direction.outbound, twilio_sid=sid, status=MessageStatus.queued
    )
    await session.commit()
    return sid


async def state(session: AsyncSession, sid: str) -> tuple[str, int | None, str | None]:
    row = (
        await session.execute(
            sa.text("SELECT status, error_code, error_message FROM messages WHERE twilio_sid = :s"),
            {"s": sid},
        )
    ).one()
    return row.status, row.error_code, row.error_message


class TestAdvanceStatus:
    async def test_failed_is_terminal(self, session):
        sid = await seed(session)
        assert await repository.advance_status(session, sid, MessageStatus.failed, 30003, "x")
        for later in (MessageStatus.delivered, MessageStatus.read, MessageStatus.undelivered):
            assert not await repository.advance_status(session, sid, later, None, None)

        assert await state(session, sid) == ("failed", 30003, "x")

    async def test_delivered_supersedes_undelivered_and_clears_its_error(self, session):
        sid = await seed(session)
        assert await repository.advance_status(session, sid, MessageStatus.undelivered, 30003, "x")
        assert await repository.advance_status(session, sid, MessageStatus.delivered, None, None)

        assert await state(session, sid) == ("delivered", None, None)

    async def test_an_older_status_is_not_applied(self, session):
        sid = await seed(session)
        assert await repository.advance_status(session, sid, MessageStatus.delivered, None, None)
        assert not await repository.advance_status(session, sid, MessageStatus.sent, None, None)

        assert await state(session, sid) == ("delivered", None, None)


async def held_conversation(session: AsyncSession, handoff_until: datetime | None) -> int:
    """A conversation an operator took over, with a message of the contact's waiting."""
    account = await add_account(session)
    conversation = await add_conversation(
        session, account.id, "+34600111333", ai_enabled=False, handoff_until=handoff_until
    )
    await add_message(
        session, conversation, body="¿Hay alguien?", created_at=utcnow() - timedelta(minutes=5)
    )
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
