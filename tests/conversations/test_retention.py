"""Retention on SQLite and PostgreSQL: idle conversations closed, messages past their account's
retention deleted, webhook logs trimmed; one cleanup at a time; the daily schedule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica import db
from platica.app import start_services, stop_services
from platica.conversations import retention
from platica.conversations.retention import (
    CleanupReport,
    DailyCleanup,
    cleanup,
    last_scheduled_run,
    run_cleanup,
)
from platica.models import (
    Account,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    MediaKind,
    MediaState,
    Message,
    MessageMedia,
    MessageStatus,
    ReplyState,
    WebhookLog,
)
from tests.conftest import make_settings
from tests.polling import eventually
from tests.records import add_account, add_conversation, add_message, open_engine

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
async def sessionmaker(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with open_engine(database_url) as engine:
        yield db.create_sessionmaker(engine)


class World:
    """Builds accounts, conversations, messages and webhook logs at chosen ages."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._numbers = 0

    async def account(self, retention_days: int | None = None) -> Account:
        return await add_account(self.session, "shop", retention_days=retention_days)

    async def conversation(
        self,
        account: Account,
        *,
        idle: timedelta,
        status: ConversationStatus = ConversationStatus.active,
    ) -> Conversation:
        self._numbers += 1
        return await add_conversation(
            self.session,
            account.id,
            f"+3460000{self._numbers:04d}",
            status=status,
            created_at=NOW - idle - timedelta(hours=1),
            last_message_at=NOW - idle,
            closed_at=NOW - idle if status == ConversationStatus.closed else None,
        )

    async def message(
        self,
        conversation: Conversation,
        *,
        age: timedelta,
        direction: Direction = Direction.inbound,
        reply_state: ReplyState | None = ReplyState.answered,
        status: MessageStatus = MessageStatus.received,
        reply_to: Message | None = None,
    ) -> Message:
        return await add_message(
            self.session,
            conversation,
            direction,
            body="hola",
            status=status,
            reply_state=reply_state if direction == Direction.inbound else None,
            reply_to_id=reply_to.id if reply_to else None,
            created_at=NOW - age,
            updated_at=NOW - age,
        )

    async def exchange(self, conversation: Conversation, *, age: timedelta) -> tuple[int, int]:
        """An answered inbound message and its reply, a minute later; their ids."""
        question = await self.message(conversation, age=age)
        answer = await self.message(
            conversation,
            age=age - timedelta(minutes=1),
            direction=Direction.outbound,
            status=MessageStatus.delivered,
            reply_to=question,
        )
        return question.id, answer.id

    async def webhook_log(self, *, age: timedelta, account: Account | None = None) -> int:
        entry = WebhookLog(
            received_at=NOW - age,
            endpoint="sms",
            account_id=account.id if account else None,
            status_code=200,
            outcome="accepted",
            params={"Body": "hola"},
        )
        self.session.add(entry)
        await self.session.flush()
        return entry.id


@pytest.fixture
async def world(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    """A session to build data in (committed after the test's setup by `commit`)."""
    async with sessionmaker() as session:
        yield World(session)


async def ids(session: AsyncSession, model: type[Message] | type[WebhookLog]) -> set[int]:
    return set(await session.scalars(select(model.id)))


class TestIdleConversations:
    async def test_only_conversations_idle_longer_than_the_days_are_closed(self, world):
        account = await world.account()
        idle = await world.conversation(account, idle=timedelta(days=31))
        recent = await world.conversation(account, idle=timedelta(days=29))
        already_closed = await world.conversation(
            account, idle=timedelta(days=90), status=ConversationStatus.closed
        )

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.closed_conversations == 1
        for conversation in (idle, recent, already_closed):
            await world.session.refresh(conversation)
        assert (idle.status, idle.closed_at) == (ConversationStatus.closed, NOW)
        assert recent.status == ConversationStatus.active
        assert recent.closed_at is None
        assert already_closed.closed_at == NOW - timedelta(days=90)

    async def test_idle_days_below_one_are_refused(self, world):
        with pytest.raises(ValueError, match="at least 1"):
            await cleanup(world.session, idle_days=0, now=NOW)


class TestMessageRetention:
    async def test_without_retention_every_message_is_kept(self, world):
        account = await world.account(retention_days=None)
        conversation = await world.conversation(account, idle=timedelta(days=400))
        await world.exchange(conversation, age=timedelta(days=400))

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_messages == 0
        assert len(await ids(world.session, Message)) == 2

    async def test_messages_older_than_the_accounts_retention_are_deleted(self, world):
        keeps_week = await world.account(retention_days=7)
        keeps_all = await world.account(retention_days=None)
        short = await world.conversation(keeps_week, idle=timedelta(days=1))
        long = await world.conversation(keeps_all, idle=timedelta(days=1))
        old = await world.exchange(short, age=timedelta(days=8))
        young = await world.exchange(short, age=timedelta(days=6))
        other_account = await world.exchange(long, age=timedelta(days=8))

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_messages == 2
        assert await ids(world.session, Message) == {*young, *other_account}
        assert not set(old) & await ids(world.session, Message)

    async def test_media_and_their_bytes_go_with_their_message(self, world):
        account = await world.account(retention_days=7)
        conversation = await world.conversation(account, idle=timedelta(days=1))
        old = await world.message(conversation, age=timedelta(days=8))
        young = await world.message(conversation, age=timedelta(days=6))
        for message in (old, young):
            world.session.add(
                MessageMedia(
                    account_id=account.id,
                    message_id=message.id,
                    position=0,
                    kind=MediaKind.audio,
                    content_type="audio/ogg",
                    url="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
                    state=MediaState.understood,
                    content=b"OggS voice note",
                    text="Hola, ¿abren el domingo?",
                )
            )
        await world.session.flush()

        await cleanup(world.session, idle_days=30, now=NOW)

        kept = (await world.session.execute(select(MessageMedia.message_id))).scalars().all()
        assert kept == [young.id]

    async def test_a_reply_outliving_its_question_loses_only_the_link(self, world):
        account = await world.account(retention_days=7)
        conversation = await world.conversation(account, idle=timedelta(days=1))
        question = await world.message(conversation, age=timedelta(days=7, minutes=1))
        answer = await world.message(
            conversation,
            age=timedelta(days=6, hours=23),
            direction=Direction.outbound,
            status=MessageStatus.delivered,
            reply_to=question,
        )

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_messages == 1
        await world.session.refresh(answer)
        assert answer.reply_to_id is None

    async def test_messages_still_in_the_reply_pipeline_are_kept(self, world):
        account = await world.account(retention_days=1)
        conversation = await world.conversation(account, idle=timedelta(days=1))
        waiting = await world.message(
            conversation, age=timedelta(days=3), reply_state=ReplyState.pending
        )
        unsent = [
            await world.message(
                conversation,
                age=timedelta(days=3),
                direction=Direction.outbound,
                status=status,
            )
            for status in (MessageStatus.pending, MessageStatus.sending)
        ]
        done = await world.message(
            conversation, age=timedelta(days=3), reply_state=ReplyState.skipped
        )

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_messages == 1
        assert await ids(world.session, Message) == {waiting.id, *(m.id for m in unsent)}
        assert done.id not in await ids(world.session, Message)

    async def test_conversations_and_contacts_are_kept(self, world):
        account = await world.account(retention_days=1)
        conversation = await world.conversation(account, idle=timedelta(days=40))
        await world.exchange(conversation, age=timedelta(days=40))

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report == CleanupReport(
            closed_conversations=1, deleted_messages=2, deleted_webhook_logs=0
        )
        assert await world.session.scalar(select(Conversation.id)) == conversation.id
        assert await world.session.scalar(select(Contact.id)) == conversation.contact_id


class TestWebhookLogs:
    async def test_kept_thirty_days(self, world):
        account = await world.account()
        old = await world.webhook_log(age=timedelta(days=31), account=account)
        orphan = await world.webhook_log(age=timedelta(days=31))
        young = await world.webhook_log(age=timedelta(days=29), account=account)

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_webhook_logs == 2
        assert await ids(world.session, WebhookLog) == {young}
        assert {old, orphan}.isdisjoint(await ids(world.session, WebhookLog))

    async def test_never_longer_than_their_accounts_retention(self, world):
        keeps_week = await world.account(retention_days=7)
        keeps_year = await world.account(retention_days=365)
        week_old = await world.webhook_log(age=timedelta(days=8), account=keeps_week)
        fresh = await world.webhook_log(age=timedelta(days=6), account=keeps_week)
        other = await world.webhook_log(age=timedelta(days=8), account=keeps_year)
        orphan = await world.webhook_log(age=timedelta(days=8))
        month_old = await world.webhook_log(age=timedelta(days=31), account=keeps_year)

        report = await cleanup(world.session, idle_days=30, now=NOW)

        assert report.deleted_webhook_logs == 2
        assert await ids(world.session, WebhookLog) == {fresh, other, orphan}
        assert {week_old, month_old}.isdisjoint(await ids(world.session, WebhookLog))


class TestRunCleanup:
    async def test_commits_and_reports(self, world, sessionmaker):
        account = await world.account(retention_days=7)
        conversation = await world.conversation(account, idle=timedelta(days=40))
        await world.exchange(conversation, age=timedelta(days=40))
        await world.webhook_log(age=timedelta(days=40), account=account)
        await world.session.commit()

        report = await run_cleanup(sessionmaker, idle_days=30, now=NOW)

        assert report == CleanupReport(1, 2, 1)
        async with sessionmaker() as session:
            assert await ids(session, Message) == set()
            status = await session.scalar(select(Conversation.status))
        assert status == ConversationStatus.closed

    async def test_a_second_run_for_the_same_moment_finds_nothing(self, world, sessionmaker):
        account = await world.account(retention_days=7)
        conversation = await world.conversation(account, idle=timedelta(days=40))
        await world.exchange(conversation, age=timedelta(days=40))
        await world.session.commit()
        await run_cleanup(sessionmaker, idle_days=30, now=NOW)

        assert await run_cleanup(sessionmaker, idle_days=30, now=NOW) == CleanupReport(0, 0, 0)

    @pytest.mark.postgres
    async def test_skipped_while_another_process_runs_it(self, postgres_url):
        engine = db.create_engine(postgres_url)
        try:
            with psycopg.connect(db.conninfo(postgres_url), autocommit=True) as other:
                other.execute("SELECT pg_advisory_lock(hashtext(%s))", [retention.LOCK_NAME])
                assert await run_cleanup(db.create_sessionmaker(engine), idle_days=30) is None
                other.execute("SELECT pg_advisory_unlock(hashtext(%s))", [retention.LOCK_NAME])
            report = await run_cleanup(db.create_sessionmaker(engine), idle_days=30)
        finally:
            await engine.dispose()
        assert report is not None


class TestSchedule:
    @pytest.mark.parametrize(
        ("at", "expected"),
        [
            (datetime(2026, 11, 22, 9, 30, tzinfo=UTC), datetime(2026, 11, 22, 8, tzinfo=UTC)),
            (datetime(2026, 11, 22, 8, 0, tzinfo=UTC), datetime(2026, 11, 22, 8, tzinfo=UTC)),
            (datetime(2026, 11, 22, 7, 59, tzinfo=UTC), datetime(2026, 11, 21, 8, tzinfo=UTC)),
            (datetime(2026, 1, 1, 0, 0, tzinfo=UTC), datetime(2025, 12, 31, 8, tzinfo=UTC)),
        ],
    )
    def test_last_scheduled_run(self, at, expected):
        assert last_scheduled_run(at) == expected

    async def test_a_run_uses_the_days_scheduled_moment(self, world, sessionmaker):
        account = await world.account()
        # 2026-10-23 09:00: idle 30 days by 2026-11-22 09:00, but the run of 2026-11-23 07:00
        # is still the one scheduled for 2026-11-22 08:00, which saw it idle for less.
        conversation = await world.conversation(account, idle=timedelta(days=30, hours=3))
        await world.session.commit()
        daily = DailyCleanup(sessionmaker)

        assert await daily.run(datetime(2026, 11, 23, 7, tzinfo=UTC)) == CleanupReport(0, 0, 0)
        assert await daily.run(datetime(2026, 11, 23, 8, tzinfo=UTC)) == CleanupReport(1, 0, 0)
        await world.session.refresh(conversation)
        assert conversation.status == ConversationStatus.closed

    async def test_a_started_process_catches_up(self, world, sessionmaker):
        account = await world.account()
        conversation = await world.conversation(account, idle=timedelta(days=400))
        await world.session.commit()
        daily = DailyCleanup(sessionmaker)

        await daily.start(first_delay=0)
        try:
            await eventually(lambda: closed(sessionmaker, conversation.id), "the catch-up run")
        finally:
            await daily.stop()

    async def test_working_processes_schedule_it(self, database_url):
        settings = make_settings(database_url)
        working = await start_services(settings, work=True)
        serving = await start_services(settings, work=False)
        try:
            assert isinstance(working.cleanup, DailyCleanup)
            assert serving.cleanup is None
        finally:
            await stop_services(working)
            await stop_services(serving)


async def closed(sessionmaker: async_sessionmaker[AsyncSession], conversation_id: int) -> bool:
    async with sessionmaker() as session:
        status = await session.scalar(
            select(Conversation.status).where(Conversation.id == conversation_id)
        )
    return status == ConversationStatus.closed
