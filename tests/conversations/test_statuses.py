"""conversations/statuses.py: the one status rule (ADVANCE), applied through db.transaction as
the SQLite webhook and the reply path run it (on PostgreSQL through psycopg), and the replay of
reports that came before their message's SID; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from platica import db
from platica.conversations.statuses import (
    StatusOutcome,
    StatusUpdate,
    apply_status,
    parse_status,
    replay_early_statuses,
)
from platica.models import Author, Direction, Message, MessageStatus, WebhookLog
from tests.factories import new_sid, status_form
from tests.jobs.test_runner import Seeder


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[db.Database]:
    """The process's database as the webhook and the worker use it (with the psycopg pool on
    PostgreSQL)."""
    engine = db.create_engine(database_url)
    pool = None if engine.dialect.name == "sqlite" else await db.open_driver_pool(database_url)
    try:
        yield db.Database(db.create_sessionmaker(engine), pool)
    finally:
        if pool is not None:
            await pool.close()
        await engine.dispose()


async def outbound(database: db.Database, sid: str | None = None) -> str:
    """An outbound message queued at Twilio with `sid` (a new one by default)."""
    sid = sid or new_sid()
    await Seeder(database.sessionmaker).conversation(
        direction=Direction.outbound,
        author=Author.ai,
        media=[],
        twilio_sid=sid,
        status=MessageStatus.queued,
    )
    return sid


async def apply(
    database: db.Database,
    sid: str,
    status: MessageStatus,
    code: int | None = None,
    error: str | None = None,
) -> StatusOutcome:
    async with database.transaction(durable=True) as tx:
        return await apply_status(tx, StatusUpdate(sid, status, code, error))


async def state(database: db.Database, sid: str) -> tuple[str, int | None, str | None]:
    async with database.session() as session:
        message = await session.scalar(sa.select(Message).where(Message.twilio_sid == sid))
        assert message is not None
        return message.status, message.error_code, message.error_message


class TestApplyStatus:
    async def test_statuses_only_move_forward(self, database):
        sid = await outbound(database)

        outcomes = [
            await apply(database, sid, status)
            for status in (MessageStatus.sent, MessageStatus.delivered, MessageStatus.sent)
        ]

        assert outcomes == [StatusOutcome.updated, StatusOutcome.updated, StatusOutcome.stale]
        assert await state(database, sid) == ("delivered", None, None)

    async def test_a_final_status_is_never_left(self, database):
        sid = await outbound(database)
        assert await apply(database, sid, MessageStatus.failed, 30003, "x") is (
            StatusOutcome.updated
        )

        for later in (MessageStatus.delivered, MessageStatus.read, MessageStatus.undelivered):
            assert await apply(database, sid, later) is StatusOutcome.ignored
        assert await state(database, sid) == ("failed", 30003, "x")

    async def test_delivered_supersedes_undelivered_and_clears_its_error(self, database):
        sid = await outbound(database)
        await apply(database, sid, MessageStatus.undelivered, 30003, "Unreachable")

        assert await apply(database, sid, MessageStatus.delivered) is StatusOutcome.updated
        assert await state(database, sid) == ("delivered", None, None)

    async def test_an_error_a_report_does_not_mention_stays(self, database):
        sid = await outbound(database)
        await apply(database, sid, MessageStatus.undelivered, 30003, "Unreachable")
        await apply(database, sid, MessageStatus.sent)

        assert await state(database, sid) == ("undelivered", 30003, "Unreachable")

    async def test_an_unknown_sid_changes_nothing(self, database):
        await outbound(database)

        assert await apply(database, new_sid(), MessageStatus.sent) is StatusOutcome.unknown


class TestReplayEarlyStatuses:
    async def early(self, database: db.Database, sid: str, *forms: dict[str, str]) -> None:
        """Status callbacks logged before any message had `sid`, as the webhook logs them."""
        async with database.session() as session:
            for form in forms:
                session.add(
                    WebhookLog(
                        endpoint="status",
                        message_sid=sid,
                        status_code=200,
                        outcome="status_unknown",
                        params={name: [value] for name, value in form.items()},
                    )
                )

    async def outcomes(self, database: db.Database) -> list[str]:
        async with database.session() as session:
            rows = await session.scalars(sa.select(WebhookLog.outcome).order_by(WebhookLog.id))
            return list(rows)

    async def test_early_reports_are_applied_in_their_order(self, database):
        sid = new_sid()
        await self.early(
            database,
            sid,
            status_form(sid, "sent"),
            status_form(sid, "undelivered", ErrorCode="30003", ErrorMessage="Unreachable"),
            status_form(sid, "delivered"),
        )
        await outbound(database, sid)

        async with database.transaction(durable=True) as tx:
            await replay_early_statuses(tx, sid)

        assert await state(database, sid) == ("delivered", None, None)
        assert await self.outcomes(database) == ["status_replayed"] * 3

    async def test_reports_after_a_final_status_are_not_replayed_over_it(self, database):
        sid = new_sid()
        await self.early(
            database,
            sid,
            status_form(sid, "failed", ErrorCode="30008"),
            status_form(sid, "delivered"),
        )
        await outbound(database, sid)

        async with database.transaction(durable=True) as tx:
            await replay_early_statuses(tx, sid)

        assert await state(database, sid) == ("failed", 30008, None)
        assert await self.outcomes(database) == ["status_replayed"] * 2

    async def test_nothing_waits_for_another_sid(self, database):
        sid = await outbound(database)
        other = new_sid()
        await self.early(database, other, status_form(other, "delivered"))

        async with database.transaction(durable=True) as tx:
            await replay_early_statuses(tx, sid)

        assert await state(database, sid) == ("queued", None, None)
        assert await self.outcomes(database) == ["status_unknown"]


class TestParseStatus:
    def test_a_word_error_code_is_kept_as_the_message(self):
        update = parse_status(
            {name: [value] for name, value in status_form(new_sid(), "failed").items()}
            | {"ErrorCode": ["InvalidSandboxRequest"]}
        )

        assert update.error_code is None
        assert update.error_message == "InvalidSandboxRequest"
