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
    utcnow,
)
from tests.records import add_account, add_conversation, add_message, open_engine


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    async with open_engine(database_url) as engine, db.create_sessionmaker(engine)() as session:
        yield session


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
