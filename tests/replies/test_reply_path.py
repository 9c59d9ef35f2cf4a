"""The reply task driven directly, with an in-process LLM and Twilio, on SQLite and PostgreSQL:
how many transactions and statements a reply costs, which commits are durable, and the
exactly-once guards of the cheaper path (the lease checked before a send, parts marked `sending`
one at a time, early status callbacks replayed, new messages picked up before the lease goes)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from platica import db
from platica.channels.sender import (
    UNSUBSCRIBED,
    DryRunSender,
    OutgoingMessage,
    SendFailed,
    SentMessage,
)
from platica.config import Settings
from platica.errors import RetryableError
from platica.jobs.locks import LeaseLocks
from platica.models import (
    Channel,
    Conversation,
    MessageStatus,
    WebhookLog,
    utcnow,
)
from platica.replies import outbox, sending
from platica.replies.context import ReplyContext, RetryPolicy
from platica.replies.generator import GeneratedReply, RateLimited, ReplyRequest
from platica.replies.pipeline import LOCK_BUSY_RETRY_SECONDS, reply_to_conversation
from platica.texts import built_in
from tests.conftest import make_settings
from tests.records import add_account, add_conversation, message_row

# A plain one-part reply: the batch read (lease, config and contact, work, LLM attempt,
# history), the reply stored (lease renewed, part, inbound answered), the SID stored (SID with
# any early status callback, lease released). Not counting BEGIN IMMEDIATE (SQLite) or SET LOCAL
# (PostgreSQL).
OPT_OUT_ES = built_in("es", "opt_out_message")
PLAIN_REPLY_TRANSACTIONS = 3
PLAIN_REPLY_STATEMENTS = 10
NOT_DURABLE = "SET LOCAL synchronous_commit = off"


class StubGenerator:
    def __init__(self) -> None:
        self.requests: list[ReplyRequest] = []
        self.text: Callable[[ReplyRequest], str] = lambda request: (
            "Echo: " + next(m.text for m in reversed(request.messages) if m.role == "user")
        )
        # Runs during the LLM call, as other processes would meanwhile.
        self.meanwhile: Callable[[], Awaitable[None]] | None = None
        # Raised by the next calls, in order.
        self.failures: list[Exception] = []

    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return GeneratedReply(self.text(request), request.model, 12, 4, 3)

    async def aclose(self) -> None:
        return None


class StubSender:
    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.found: list[SentMessage] = []
        self.on_send: Callable[[OutgoingMessage], Awaitable[None]] | None = None
        # Raised by the next sends, in order, before anything is sent.
        self.failures: list[Exception] = []
        # Raised by the next lookups (find_sent), in order; the `since` of each lookup.
        self.lookup_failures: list[Exception] = []
        self.lookups: list[datetime] = []
        self._sids = (f"SM{n:032x}" for n in itertools.count(1))

    def next_sid(self) -> str:
        return next(self._sids)

    async def send(self, message: OutgoingMessage) -> SentMessage:
        if self.on_send is not None:
            await self.on_send(message)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        return SentMessage(self.next_sid(), MessageStatus.queued)

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> list[SentMessage]:
        self.lookups.append(since)
        if self.lookup_failures:
            raise self.lookup_failures.pop(0)
        return self.found

    async def aclose(self) -> None:
        return None


@dataclass
class Statements:
    """Every statement run on the engine, grouped by transaction (PostgreSQL's implicit BEGIN
    and SQLite's BEGIN IMMEDIATE start one; COMMIT or ROLLBACK ends it)."""

    transactions: list[list[str]] = field(default_factory=list)
    _open: list[str] | None = None

    def statement(self, sql: str) -> None:
        if sql.startswith("BEGIN"):
            return
        if self._open is None:
            self._open = []
            self.transactions.append(self._open)
        self._open.append(sql)

    def end(self) -> None:
        self._open = None

    def clear(self) -> None:
        self.transactions.clear()
        self._open = None

    @property
    def counted(self) -> list[str]:
        return [s for t in self.transactions for s in t if s != NOT_DURABLE]


@dataclass
class Path:
    engine: AsyncEngine
    ctx: ReplyContext
    generator: StubGenerator
    sender: StubSender
    statements: Statements
    account_id: Any = None
    contact_id: int = 0

    async def conversation(self, channel: Channel = Channel.sms, *bodies: str) -> int:
        """A conversation with an inbound message per body, waiting for its reply."""
        sessionmaker = db.create_sessionmaker(self.engine)
        async with db.session(sessionmaker) as session:
            if self.account_id is None:
                numbers = {Channel.sms: "+15005550006", Channel.whatsapp: "+14155238886"}
                account = await add_account(
                    session, numbers=numbers, config={"debounce_seconds": 0.0}
                )
                self.account_id = account.id
            self.contact_id += 1
            address = f"+3460011{self.contact_id:04d}"
            conversation = await add_conversation(session, self.account_id, address, channel)
            for body in bodies or ("¿Abren el domingo?",):
                session.add(message_row(conversation, body=body))
            conversation_id: int = conversation.id
        self.statements.clear()
        return conversation_id

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as connection:
            return list(await connection.execute(sa.text(sql), params))

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as connection:
            return (await connection.execute(sa.text(sql), params)).scalar()

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(sa.text(sql), params)

    async def outbound(self) -> list[Any]:
        return await self.rows(
            "SELECT id, body, status, twilio_sid, part, attempts, reply_to_id FROM messages"
            " WHERE direction = 'outbound' ORDER BY id"
        )


# What a psycopg connection of the pool runs for itself, not for the reply path.
CONNECTION_SETUP = ("SET platica.service", "SET plan_cache_mode", "SELECT 1")


def record_psycopg(statements: Statements, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement psycopg runs (the reply path's, on PostgreSQL), grouped by transaction
    (psycopg's transaction blocks)."""
    real_execute = psycopg.AsyncCursor.execute
    real_connection_execute = psycopg.AsyncConnection.execute
    real_transaction = psycopg.AsyncConnection.transaction

    def note(query: Any) -> None:
        sql = " ".join(str(query).split())
        if not sql.startswith(CONNECTION_SETUP):
            statements.statement(sql)

    async def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        note(query)
        return await real_execute(cursor, query, *args, **kwargs)

    async def connection_execute(connection: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        note(query)
        return await real_connection_execute(connection, query, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def transaction(connection: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async with real_transaction(connection, *args, **kwargs) as block:
                yield block
        finally:
            statements.end()

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    monkeypatch.setattr(psycopg.AsyncConnection, "execute", connection_execute)
    monkeypatch.setattr(psycopg.AsyncConnection, "transaction", transaction)


async def record_sqlite(engine: AsyncEngine, statements: Statements) -> None:
    """Every statement SQLite runs on the engine's one connection (through SQLAlchemy or
    straight on sqlite3: db.engine.lend_sqlite), grouped by transaction."""

    def trace(sql: str) -> None:
        if sql.startswith("PRAGMA busy_timeout"):
            return  # lend_sqlite's own, around every transaction
        if sql in ("COMMIT", "ROLLBACK"):
            statements.end()
        else:
            statements.statement(sql)

    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert raw.driver_connection is not None
        raw.driver_connection._conn.set_trace_callback(trace)


@pytest.fixture
async def path(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """The reply path as a process runs it: on PostgreSQL through the psycopg pool
    (db.open_driver_pool), on SQLite on the engine's one sqlite3 connection."""
    settings: Settings = make_settings(database_url)
    engine = db.create_engine(database_url)
    sessionmaker = db.create_sessionmaker(engine)
    statements = Statements()
    driver_pool = None
    if engine.dialect.name == "postgresql":
        driver_pool = await db.open_driver_pool(database_url)
        record_psycopg(statements, monkeypatch)
    else:
        await record_sqlite(engine, statements)

    generator, sender = StubGenerator(), StubSender()
    ctx = ReplyContext(
        settings=settings,
        sessionmaker=sessionmaker,
        generator=generator,
        sender=sender,
        locks=LeaseLocks(sessionmaker, driver_pool=driver_pool),
        policy=RetryPolicy(backoff_base=0.01, backoff_max=0.05),
        driver_pool=driver_pool,
    )
    try:
        yield Path(engine, ctx, generator, sender, statements)
    finally:
        if driver_pool is not None:
            await driver_pool.close()
        await engine.dispose()


async def leave_sending(path: Path, body: str = "Echo") -> None:
    """The conversation's message answered by a reply left `sending` (one attempt counted), as a
    crash between the durable `sending` commit and Twilio's answer leaves it."""
    reply_to = await path.scalar("SELECT id FROM messages")
    await path.execute("UPDATE messages SET reply_state = 'answered' WHERE id = :id", id=reply_to)
    now = utcnow()
    await path.execute(
        "INSERT INTO messages (account_id, conversation_id, channel, direction, author,"
        " body, status, reply_to_id, part, attempts, simulated, created_at, updated_at)"
        " SELECT account_id, conversation_id, channel, 'outbound', 'ai', :body,"
        " 'sending', id, 0, 1, false, :now, :now FROM messages WHERE id = :id",
        id=reply_to,
        now=now,
        body=body,
    )


class TestRoundTrips:
    async def test_a_plain_reply_takes_three_transactions_and_few_statements(self, path):
        conversation = await path.conversation()

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert len(path.sender.sent) == 1
        transactions = path.statements.transactions
        assert transactions, "no statement was seen"
        assert len(transactions) <= PLAIN_REPLY_TRANSACTIONS, transactions
        assert len(path.statements.counted) <= PLAIN_REPLY_STATEMENTS, transactions

    async def test_only_the_commit_before_twilio_waits_for_the_disk(self, path):
        """On PostgreSQL every transaction but the one storing the reply as `sending` runs with
        synchronous_commit off; SQLite needs no such statement."""
        conversation = await path.conversation()

        await reply_to_conversation(path.ctx, conversation)

        postgres = path.engine.dialect.name == "postgresql"
        assert len(path.statements.transactions) == PLAIN_REPLY_TRANSACTIONS
        for transaction in path.statements.transactions:
            stores_the_reply = any(s.startswith("INSERT INTO messages") for s in transaction)
            relaxed = transaction[0] == NOT_DURABLE
            assert relaxed is (postgres and not stores_the_reply), transaction

    async def test_a_second_message_meanwhile_costs_another_round_not_a_lost_reply(self, path):
        conversation = await path.conversation()
        sessionmaker = db.create_sessionmaker(path.engine)

        async def second_message() -> None:
            async with db.session(sessionmaker) as session:
                stored = await session.get(Conversation, conversation)
                assert stored is not None
                session.add(message_row(stored, body="¿Y el lunes?"))

        path.generator.meanwhile = second_message

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert [m.body for m in path.sender.sent] == [
            "Echo: ¿Abren el domingo?",
            "Echo: ¿Y el lunes?",
        ]
        lease = await path.rows("SELECT lease_owner, lease_expires_at FROM conversations")
        assert [tuple(row) for row in lease] == [(None, None)]


class TestExactlyOnce:
    async def test_whatsapp_parts_are_marked_sending_one_at_a_time_in_order(self, path):
        paragraphs = [f"Párrafo {i}: " + "texto " * 120 for i in range(4)]
        path.generator.text = lambda _request: "\n\n".join(paragraphs)
        conversation = await path.conversation(Channel.whatsapp, "Explícamelo todo")
        seen: list[list[str]] = []

        async def record_statuses(_message: OutgoingMessage) -> None:
            rows = await path.outbound()
            seen.append([row.status for row in rows])

        path.sender.on_send = record_statuses

        assert await reply_to_conversation(path.ctx, conversation) is None

        rows = await path.outbound()
        count = len(rows)
        assert count >= 2
        assert [m.body for m in path.sender.sent] == [row.body for row in rows]
        assert [row.part for row in rows] == list(range(count))
        # At each send, the parts before are settled, this one is `sending`, the rest pending.
        for index, statuses in enumerate(seen):
            assert statuses == ["queued"] * index + ["sending"] + ["pending"] * (count - index - 1)
        assert [row.attempts for row in rows] == [1] * count
        assert all(row.twilio_sid for row in rows)

    async def test_a_reply_left_sending_is_reconciled_not_sent_again(self, path):
        """As after a crash between the durable `sending` commit and Twilio's answer."""
        conversation = await path.conversation()
        await leave_sending(path)
        sid = path.sender.next_sid()
        path.sender.found = [SentMessage(sid, MessageStatus.sent)]

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert path.sender.sent == []
        [reply] = await path.outbound()
        assert (reply.twilio_sid, reply.status, reply.attempts) == (sid, "sent", 1)

    async def test_a_lookup_never_takes_a_sid_another_message_has(self, path):
        """The same text sent twice (a fallback during an outage, HELP answers), the second send
        cut short: Twilio's list finds the first, whose SID is ours already. It is not taken
        (that crashed the task on the unique SID, forever): the reply is sent."""
        conversation = await path.conversation()
        await leave_sending(path, body="Sorry, we can't answer right now.")
        taken = path.sender.next_sid()
        await path.execute(
            "INSERT INTO messages (account_id, conversation_id, channel, direction, author,"
            " body, twilio_sid, status, part, attempts, simulated, created_at,"
            " updated_at) SELECT account_id, conversation_id, channel, 'outbound', 'system',"
            " body, :sid, 'delivered', 0, 1, false, created_at, updated_at FROM messages"
            " WHERE status = 'sending'",
            sid=taken,
        )
        path.sender.found = [SentMessage(taken, MessageStatus.delivered)]

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert [m.body for m in path.sender.sent] == ["Sorry, we can't answer right now."]
        rows = await path.rows(
            "SELECT twilio_sid FROM messages WHERE direction = 'outbound' ORDER BY id"
        )
        sids = [row.twilio_sid for row in rows]
        assert sids[1] == taken
        assert sids[0] not in (None, taken)

    async def test_the_lookup_starts_at_this_attempts_sending_mark(self, path):
        """Only what Twilio created since the message was marked `sending` for this attempt can
        be it, however long ago it was stored; a failed lookup keeps that moment."""
        conversation = await path.conversation()
        await leave_sending(path)
        marked = utcnow() - timedelta(seconds=30)
        await path.execute(
            "UPDATE messages SET created_at = :stored, updated_at = :marked"
            " WHERE direction = 'outbound'",
            stored=marked - timedelta(minutes=10),
            marked=marked,
        )
        path.sender.lookup_failures = [RetryableError("Twilio could not be asked")]

        assert await reply_to_conversation(path.ctx, conversation) is not None
        assert await reply_to_conversation(path.ctx, conversation) is None

        assert len(path.sender.lookups) == 2
        for since in path.sender.lookups:
            assert abs(since - marked) < timedelta(milliseconds=1)

    async def test_a_sid_clash_when_storing_means_not_found(self, path, monkeypatch):
        """Between the lookup and storing the SID another message took it: not found after
        all, no crash; the next look leaves it out."""
        conversation = await path.conversation()
        await leave_sending(path)
        taken = path.sender.next_sid()
        await path.execute(
            "INSERT INTO messages (account_id, conversation_id, channel, direction, author,"
            " body, twilio_sid, status, part, attempts, simulated, created_at,"
            " updated_at) SELECT account_id, conversation_id, channel, 'outbound', 'ai',"
            " body, :sid, 'sent', 0, 1, false, created_at, updated_at FROM messages"
            " WHERE status = 'sending'",
            sid=taken,
        )
        path.sender.found = [SentMessage(taken, MessageStatus.sent)]
        real = outbox.stored_sids
        calls = 0

        async def stale_once(connection, sids):
            nonlocal calls
            calls += 1
            return set() if calls == 1 else await real(connection, sids)

        monkeypatch.setattr(outbox, "stored_sids", stale_once)

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert len(path.sender.sent) == 1
        assert (
            await path.scalar(
                "SELECT count(DISTINCT twilio_sid) FROM messages WHERE direction = 'outbound'"
            )
            == 2
        )

    async def test_a_lease_lost_during_the_llm_call_stores_and_sends_nothing(self, path):
        conversation = await path.conversation()

        async def another_worker_takes_over() -> None:
            await path.execute(
                "UPDATE conversations SET lease_owner = 'another-worker', lease_expires_at = :at",
                at=utcnow(),
            )

        path.generator.meanwhile = another_worker_takes_over

        assert await reply_to_conversation(path.ctx, conversation) == LOCK_BUSY_RETRY_SECONDS

        assert path.sender.sent == []
        assert await path.outbound() == []
        assert await path.scalar("SELECT reply_state FROM messages") == "pending"
        # The other worker's lease is left alone; once it lapses the reply goes out.
        assert await path.scalar("SELECT lease_owner FROM conversations") == "another-worker"
        assert await reply_to_conversation(path.ctx, conversation) is None
        assert len(path.sender.sent) == 1

    async def test_a_status_callback_that_came_before_the_sid_is_replayed(self, path):
        conversation = await path.conversation()
        sid = f"SM{1:032x}"  # the stub's first SID
        async with path.engine.begin() as connection:
            await connection.execute(
                sa.insert(WebhookLog).values(
                    endpoint="status",
                    message_sid=sid,
                    status_code=200,
                    outcome="status_unknown",
                    params={"MessageSid": [sid], "MessageStatus": ["delivered"]},
                    received_at=utcnow(),
                )
            )

        assert await reply_to_conversation(path.ctx, conversation) is None

        [reply] = await path.outbound()
        assert (reply.twilio_sid, reply.status) == (sid, "delivered")
        assert await path.scalar("SELECT outcome FROM webhook_logs") == "status_replayed"

    async def early_statuses(self, path, sid: str, *statuses: dict[str, list[str]]) -> None:
        async with path.engine.begin() as connection:
            for params in statuses:
                await connection.execute(
                    sa.insert(WebhookLog).values(
                        endpoint="status",
                        message_sid=sid,
                        status_code=200,
                        outcome="status_unknown",
                        params={"MessageSid": [sid], **params},
                        received_at=utcnow(),
                    )
                )

    async def test_early_callbacks_after_failed_are_not_replayed_over_it(self, path):
        conversation = await path.conversation()
        sid = f"SM{1:032x}"  # the stub's first SID
        await self.early_statuses(
            path,
            sid,
            {"MessageStatus": ["sent"]},
            {"MessageStatus": ["failed"], "ErrorCode": ["30003"]},
            {"MessageStatus": ["delivered"]},
        )

        assert await reply_to_conversation(path.ctx, conversation) is None

        [row] = await path.rows(
            "SELECT status, error_code FROM messages WHERE direction = 'outbound'"
        )
        assert (row.status, row.error_code) == ("failed", 30003)

    async def test_early_delivered_after_undelivered_clears_the_error(self, path):
        conversation = await path.conversation()
        sid = f"SM{1:032x}"
        await self.early_statuses(
            path,
            sid,
            {"MessageStatus": ["undelivered"], "ErrorCode": ["30003"], "ErrorMessage": ["x"]},
            {"MessageStatus": ["delivered"]},
        )

        assert await reply_to_conversation(path.ctx, conversation) is None

        [row] = await path.rows(
            "SELECT status, error_code, error_message FROM messages WHERE direction = 'outbound'"
        )
        assert (row.status, row.error_code, row.error_message) == ("delivered", None, None)


class TestDecisions:
    async def test_whatsapp_stop_in_a_burst_is_confirmed_and_the_rest_skipped(self, path):
        conversation = await path.conversation(Channel.whatsapp, "STOP", "¿hola?")

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert [m.body for m in path.sender.sent] == [OPT_OUT_ES]
        assert path.generator.requests == []
        inbound = await path.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        assert [tuple(row) for row in inbound] == [
            ("answered", "STOP: opted out, confirmation sent"),
            ("skipped", "contact opted out"),
        ]
        assert await path.scalar("SELECT opted_out FROM contacts") in (True, 1)
        assert await path.scalar("SELECT lease_owner FROM conversations") is None

    async def test_an_expired_handoff_is_given_back_to_the_ai_for_good(self, path):
        conversation = await path.conversation()
        await path.execute(
            "UPDATE conversations SET ai_enabled = false, handoff_until = :past",
            past=datetime(2020, 1, 1, tzinfo=UTC),
        )

        assert await reply_to_conversation(path.ctx, conversation) is None

        assert len(path.sender.sent) == 1
        [row] = await path.rows("SELECT ai_enabled, handoff_until FROM conversations")
        assert (bool(row.ai_enabled), row.handoff_until) == (True, None)


class TestLlmRateLimits:
    async def test_a_429_paces_the_reply_and_gives_its_attempt_back(self, path):
        """The messages wait for the provider (pending, no fallback), and the 429 does not use
        up one of the batch's LLM attempts."""
        conversation = await path.conversation()
        path.generator.failures = [RateLimited("the LLM is rate limited (429)", 42.0)]

        wait = await reply_to_conversation(path.ctx, conversation)

        assert wait is not None
        assert 42.0 <= wait <= 42.0 * 1.25
        [row] = await path.rows("SELECT reply_state, attempts FROM messages")
        assert (row.reply_state, row.attempts) == ("pending", 0)
        assert await path.outbound() == []
        assert await path.scalar("SELECT lease_owner FROM conversations") is None
        # Once the provider is back, the reply is the AI's.
        assert await reply_to_conversation(path.ctx, conversation) is None
        assert [m.body for m in path.sender.sent] == ["Echo: ¿Abren el domingo?"]

    async def test_429s_never_use_up_the_attempts(self, path):
        conversation = await path.conversation()
        for _ in range(path.ctx.policy.llm_attempts + 2):
            path.generator.failures = [RateLimited("the LLM is rate limited (429)", 1.0)]
            assert await reply_to_conversation(path.ctx, conversation) is not None

        assert await reply_to_conversation(path.ctx, conversation) is None
        assert [m.body for m in path.sender.sent] == ["Echo: ¿Abren el domingo?"]

    async def test_past_the_patience_bound_a_429_gets_the_fallback(self, path):
        conversation = await path.conversation()
        await path.execute(
            "UPDATE messages SET created_at = :old",
            old=utcnow() - path.ctx.policy.llm_patience - timedelta(seconds=1),
        )
        path.generator.failures = [RateLimited("the LLM is rate limited (429)", 30.0)]

        assert await reply_to_conversation(path.ctx, conversation) is None

        [reply] = path.sender.sent
        # The account has no fallback of its own: the built-in one in its language.
        assert reply.body == built_in("es", "fallback_message")
        note = await path.scalar("SELECT note FROM messages WHERE direction = 'inbound'")
        assert "429" in note

    async def test_near_the_patience_bound_the_wait_ends_at_it(self, path):
        conversation = await path.conversation()
        await path.execute(
            "UPDATE messages SET created_at = :old",
            old=utcnow() - path.ctx.policy.llm_patience + timedelta(seconds=10),
        )
        path.generator.failures = [RateLimited("the LLM is rate limited (429)", 60.0)]

        wait = await reply_to_conversation(path.ctx, conversation)

        assert wait is not None
        assert wait <= 10.5


class TestLogging:
    async def test_a_dry_run_is_not_logged_as_sent_with_no_sid(self, path, monkeypatch):
        capture = structlog.testing.LogCapture()
        monkeypatch.setattr(sending, "log", structlog.wrap_logger(None, processors=[capture]))
        path.ctx.sender = DryRunSender()
        conversation = await path.conversation()

        assert await reply_to_conversation(path.ctx, conversation) is None

        [reply] = await path.outbound()
        assert (reply.status, reply.twilio_sid) == ("dry_run", None)
        events = [entry["event"] for entry in capture.entries]
        assert "reply.sent" not in events
        [dry_run] = [entry for entry in capture.entries if entry["event"] == "reply.dry_run"]
        assert dry_run["message_id"] == reply.id
        assert "sid" not in dry_run


class TestSendFailures:
    async def test_an_unsubscribed_recipient_fails_the_reply_and_opts_the_contact_out(self, path):
        conversation = await path.conversation()
        path.sender.failures = [SendFailed("unsubscribed", UNSUBSCRIBED)]

        assert await reply_to_conversation(path.ctx, conversation) is None

        [reply] = await path.rows(
            "SELECT status, error_code, attempts FROM messages WHERE direction = 'outbound'"
        )
        assert tuple(reply) == ("failed", UNSUBSCRIBED, 1)
        assert await path.scalar("SELECT opted_out FROM contacts") in (True, 1)

    async def test_transient_failures_are_retried_then_waited_out(self, path):
        conversation = await path.conversation()
        path.sender.failures = [RetryableError("Twilio answered 500", ambiguous=True)] * 3

        wait = await reply_to_conversation(path.ctx, conversation)

        assert wait is not None
        assert wait > 0
        [reply] = await path.outbound()
        assert (reply.status, reply.attempts) == ("sending", 3)
        assert await path.scalar("SELECT lease_owner FROM conversations") is None
        # The next run asks Twilio first (nothing landed), then sends.
        assert await reply_to_conversation(path.ctx, conversation) is None
        [reply] = await path.outbound()
        assert (reply.status, reply.attempts) == ("queued", 4)
        assert len(path.sender.sent) == 1

    async def test_a_failing_lookup_backs_off_exponentially_and_counts(self, path):
        """A reply left `sending` (a crash mid-send) and Twilio failing every lookup: each run
        counts the lookup as an attempt and waits longer than the one before."""
        conversation = await path.conversation()
        await leave_sending(path)
        path.sender.lookup_failures = [RetryableError("Twilio could not be asked")] * 4
        path.ctx.policy = RetryPolicy(backoff_base=1.0, backoff_max=300.0)

        waits, attempts = [], []
        for _ in range(4):
            waits.append(await reply_to_conversation(path.ctx, conversation))
            [reply] = await path.outbound()
            attempts.append(reply.attempts)

        assert attempts == [2, 3, 4, 5]
        numbers = [wait for wait in waits if wait is not None]
        assert len(numbers) == 4, waits
        assert numbers == sorted(numbers), waits
        assert len(set(numbers)) == 4, waits
        assert path.sender.sent == []

    async def test_a_reply_still_failing_after_an_hour_is_given_up(self, path):
        conversation = await path.conversation()
        path.sender.failures = [RetryableError("Twilio answered 429")] * 3
        assert await reply_to_conversation(path.ctx, conversation) is not None
        await path.execute(
            "UPDATE messages SET created_at = :old WHERE direction = 'outbound'",
            old=utcnow() - timedelta(hours=2),
        )
        path.sender.failures = [RetryableError("Twilio answered 429")]

        assert await reply_to_conversation(path.ctx, conversation) is None

        [reply] = await path.rows(
            "SELECT status, error_message FROM messages WHERE direction = 'outbound'"
        )
        assert reply.status == "failed"
        assert reply.error_message.startswith("gave up")
        assert path.sender.sent == []
