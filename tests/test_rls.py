"""Row-level security and the SQL functions of revision 0003, on PostgreSQL.

Connected as a role that neither owns the tables nor bypasses RLS: each account sees only its
rows, in direct SQL and through the API of a server connected as that role; the service and the
admin token see every account; the SQL functions report the API's figures to the digit.
"""

from __future__ import annotations

import math
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from platica import db
from platica.accounts import hash_api_key, new_api_key
from platica.models import (
    Account,
    ApiKey,
    Author,
    Broadcast,
    BroadcastRecipient,
    BroadcastStatus,
    Channel,
    Contact,
    Conversation,
    ConversationStatus,
    DashboardSession,
    Direction,
    IdempotencyKey,
    MediaKind,
    MediaState,
    Message,
    MessageMedia,
    MessageStatus,
    RecipientState,
    ReplyState,
    Template,
    TemplateApproval,
    WebhookLog,
    utcnow,
)
from tests.conftest import TABLES, LiveServer, make_settings, truncate_all
from tests.factories import SMS_NUMBER, WHATSAPP_NUMBER, inbound_form, new_sid, post_signed
from tests.fakes import FakeTwilio
from tests.polling import wait_for
from tests.records import account_row, config_rows, contact_row, conversation_row, message_row
from tests.throwaway import throwaway_database

pytestmark = pytest.mark.postgres

ADMIN_TOKEN = "admin-3b1f9a7c-5d2e8f40a1b6c9"
# Account B's numbers; account A owns the factories' (and the test settings') numbers.
B_SMS_NUMBER = "+15005550009"
B_WHATSAPP_NUMBER = "+14155230009"
SQL_FUNCTIONS = {
    "get_whatsapp_stats",
    "get_sms_stats",
    "get_whatsapp_engagement_metrics",
    "get_sms_engagement_metrics",
    "cleanup_old_whatsapp_conversations",
    "cleanup_old_sms_conversations",
    "get_sms_conversation_history",
    "get_user_sms_stats",
}


# --- the non-owner role ---------------------------------------------------------------------


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def grant_app_role(url: str, role: str) -> None:
    """What an operator grants Plática's own role (see revision 0003), in `url`'s database."""
    with psycopg.connect(dsn(url), autocommit=True) as connection:
        connection.execute(
            f"""
            GRANT USAGE ON SCHEMA public TO {role};
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
            GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role};
            """
        )


@dataclass(frozen=True)
class AppRole:
    name: str

    def url(self, database_url: str) -> str:
        """`database_url`, connecting as this role (trust authentication: no password)."""
        return make_url(database_url).set(username=self.name).render_as_string(False)


@pytest.fixture(scope="session")
def app_role(postgres_url: str) -> Iterator[AppRole]:
    """A login role of this session's own that owns nothing and does not bypass RLS, granted
    what Plática needs in the session's test database. Roles are cluster-wide: dropped after."""
    name = f"platica_rls_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn(postgres_url), autocommit=True) as connection:
        connection.execute(
            f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                    CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
                END IF;
            END $$
            """
        )
    try:
        grant_app_role(postgres_url, name)
        yield AppRole(name)
    finally:
        with psycopg.connect(dsn(postgres_url), autocommit=True) as connection:
            # DROP OWNED also revokes every privilege granted to it in this database; any
            # other database it was granted in (throwaway ones) is dropped by its test.
            connection.execute(f"DROP OWNED BY {name}")
            connection.execute(f"DROP ROLE IF EXISTS {name}")


Row = dict[str, Any]
SqlConnection = psycopg.Connection[Row]


@contextmanager
def connect_as(
    role: AppRole, url: str, settings: dict[str, str] | None = None
) -> Iterator[SqlConnection]:
    """An autocommit connection as `role`, with these session settings (name: value)."""
    with psycopg.connect(dsn(role.url(url)), autocommit=True, row_factory=dict_row) as connection:
        for name, value in (settings or {}).items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        yield connection


def scoped(role: AppRole, url: str, account: uuid.UUID) -> AbstractContextManager[SqlConnection]:
    """As the API's account callers: only `account`'s rows."""
    return connect_as(role, url, {"platica.account_id": str(account)})


def service(role: AppRole, url: str) -> AbstractContextManager[SqlConnection]:
    """As Plática's webhooks, worker and admin: every row."""
    return connect_as(role, url, {"platica.service": "on"})


# --- data --------------------------------------------------------------------------------------


@dataclass
class Builder:
    """Rows of one account, with created_at offsets from `now`."""

    session: Session
    account: Account
    now: datetime
    contacts: dict[tuple[str, str], Contact] = field(default_factory=dict)

    def conversation(
        self,
        channel: Channel,
        address: str,
        *,
        status: ConversationStatus = ConversationStatus.active,
        opened: timedelta,
    ) -> Conversation:
        contact = self.contacts.get((channel, address))
        if contact is None:
            contact = contact_row(self.account.id, address, channel, created_at=self.now - opened)
            self.session.add(contact)
            self.session.flush()
            self.contacts[(channel, address)] = contact
        conversation = conversation_row(
            contact,
            status=status,
            created_at=self.now - opened,
            last_message_at=self.now - opened,
            closed_at=self.now if status == ConversationStatus.closed else None,
        )
        self.session.add(conversation)
        self.session.flush()
        return conversation

    def _message(self, conversation: Conversation, at: datetime, **values: Any) -> Message:
        values.setdefault("body", "hola")
        message = message_row(
            conversation, twilio_sid=new_sid(), attempts=0, created_at=at, updated_at=at, **values
        )
        self.session.add(message)
        self.session.flush()
        conversation.last_message_at = max(conversation.last_message_at, at)
        return message

    def inbound(
        self, conversation: Conversation, ago: timedelta, state: ReplyState = ReplyState.answered
    ) -> Message:
        contact = self.session.get(Contact, conversation.contact_id)
        assert contact is not None
        at = self.now - ago
        contact.last_inbound_at = max(contact.last_inbound_at or at, at)
        return self._message(
            conversation,
            at,
            direction=Direction.inbound,
            author=Author.contact,
            status=MessageStatus.received,
            reply_state=state,
            part=0,
        )

    def reply(
        self,
        inbound: Message,
        after_ms: float,
        *,
        author: Author = Author.ai,
        part: int = 0,
    ) -> Message:
        conversation = self.session.get(Conversation, inbound.conversation_id)
        assert conversation is not None
        return self._message(
            conversation,
            inbound.created_at + timedelta(milliseconds=after_ms),
            direction=Direction.outbound,
            author=author,
            status=MessageStatus.delivered,
            reply_to_id=inbound.id,
            part=part,
        )

    def operator(self, conversation: Conversation, ago: timedelta) -> Message:
        return self._message(
            conversation,
            self.now - ago,
            direction=Direction.outbound,
            author=Author.operator,
            status=MessageStatus.delivered,
            part=0,
        )


@dataclass
class Seeded:
    a: uuid.UUID
    b: uuid.UUID
    key_a: str
    key_b: str
    conversations: dict[str, int]

    def account(self, name: str) -> uuid.UUID:
        return {"a": self.a, "b": self.b}[name]


def hours(value: float) -> timedelta:
    return timedelta(hours=value)


def days(value: float) -> timedelta:
    return timedelta(days=value)


def new_account(session: Session, name: str, sms: str, whatsapp: str) -> tuple[Account, str]:
    account = account_row(name, created_at=utcnow())
    session.add(account)
    session.flush()
    session.add_all(config_rows(account, {Channel.sms: sms, Channel.whatsapp: whatsapp}))
    key = new_api_key()
    session.add(
        ApiKey(account_id=account.id, prefix=key[:12], key_hash=hash_api_key(key), name="test")
    )
    session.flush()
    return account, key


def seed(url: str) -> Seeded:
    """Two accounts with their own numbers, as the owner.

    Account A, SMS: +34600000001 has a closed conversation from 20 days ago (answered in 1000
    ms) and an active one (3 h ago answered in 1500.25 ms, in two parts; 2 h ago skipped);
    +34600000002's conversation (3 days ago, fallback reply in 2345.678 ms, then an operator's
    message) is closed; +34600000003's is active but idle for 10 days (answered in 800 ms).
    Account A, WhatsApp: +34600000001 wrote 30 h and 1 h ago (answered in 1200 and 950.5 ms);
    +34600000009 wrote 5 h ago, and the reply failed.
    Account B, SMS: +34600000001 (the same person) wrote 50 h and 4 h ago (2000 and 3000 ms).
    Account B, WhatsApp: +34700000001 idle for 40 days (500 ms); +34700000002 6 h ago (700 ms).
    """
    truncate_all(url)
    engine = sa.create_engine(db.sync_url(url))
    now = utcnow()
    ids: dict[str, int] = {}
    with Session(engine) as session:
        account_a, key_a = new_account(session, "Acme", SMS_NUMBER, WHATSAPP_NUMBER)
        account_b, key_b = new_account(session, "Bodega", B_SMS_NUMBER, B_WHATSAPP_NUMBER)
        a = Builder(session, account_a, now)
        closed = ConversationStatus.closed

        s0 = a.conversation(Channel.sms, "+34600000001", status=closed, opened=days(20))
        a.reply(a.inbound(s0, days(20)), 1000)
        s1 = a.conversation(Channel.sms, "+34600000001", opened=hours(3))
        first = a.inbound(s1, hours(3))
        a.reply(first, 1500.25)
        a.reply(first, 1600, part=1)
        a.inbound(s1, hours(2), ReplyState.skipped)
        s2 = a.conversation(Channel.sms, "+34600000002", status=closed, opened=days(3))
        a.reply(a.inbound(s2, days(3)), 2345.678, author=Author.system)
        a.operator(s2, days(3) - timedelta(minutes=10))
        a.contacts[(Channel.sms, "+34600000002")].opted_out = True
        s3 = a.conversation(Channel.sms, "+34600000003", opened=days(10))
        a.reply(a.inbound(s3, days(10)), 800)
        w1 = a.conversation(Channel.whatsapp, "+34600000001", opened=hours(30))
        a.reply(a.inbound(w1, hours(30)), 1200)
        voice_a = a.inbound(w1, hours(1))
        a.reply(voice_a, 950.5)
        w2 = a.conversation(Channel.whatsapp, "+34600000009", opened=hours(5))
        a.inbound(w2, hours(5), ReplyState.failed)

        b = Builder(session, account_b, now)
        bs1 = b.conversation(Channel.sms, "+34600000001", opened=hours(50))
        b.reply(b.inbound(bs1, hours(50)), 2000)
        b.reply(b.inbound(bs1, hours(4)), 3000)
        bw1 = b.conversation(Channel.whatsapp, "+34700000001", opened=days(40))
        b.reply(b.inbound(bw1, days(40)), 500)
        bw2 = b.conversation(Channel.whatsapp, "+34700000002", opened=hours(6))
        voice_b = b.inbound(bw2, hours(6))
        b.reply(voice_b, 700)
        session.flush()
        for account, message in ((account_a, voice_a), (account_b, voice_b)):
            session.add(
                MessageMedia(
                    account_id=account.id,
                    message_id=message.id,
                    position=0,
                    kind=MediaKind.audio,
                    content_type="audio/ogg",
                    state=MediaState.understood,
                    text="Hola, ¿tienen mesa para cuatro?",
                )
            )
            template = Template(
                account_id=account.id,
                sid="HX" + uuid.uuid4().hex,
                name="recordatorio_cita",
                language="es",
                body="Hola {{1}}, le recordamos su cita de mañana.",
                variables={"1": "Ana"},
                approval=TemplateApproval.approved,
            )
            session.add(template)
            session.flush()
            # Done: a server started on this data must not send it.
            broadcast = Broadcast(
                account_id=account.id,
                channel=Channel.whatsapp,
                template_id=template.id,
                total=1,
                status=BroadcastStatus.done,
            )
            session.add(broadcast)
            session.flush()
            session.add(
                BroadcastRecipient(
                    broadcast_id=broadcast.id,
                    account_id=account.id,
                    address="+34600000001",
                    state=RecipientState.skipped,
                    reason="the contact has opted out (STOP)",
                )
            )
            session.add(
                IdempotencyKey(
                    account_id=account.id,
                    key="pedido-1",
                    request_hash="0" * 64,
                    message_id=message.id,
                )
            )

        for account_id in (account_a.id, account_b.id, None):
            session.add(
                DashboardSession(
                    id_hash=uuid.uuid4().hex * 2,
                    account_id=account_id,
                    kind="api_key" if account_id else "admin",
                    expires_at=now + hours(12),
                )
            )
            session.add(
                WebhookLog(
                    endpoint="sms",
                    account_id=account_id,
                    status_code=200 if account_id else 404,
                    outcome="stored" if account_id else "unknown_number",
                    received_at=now,
                )
            )
        session.commit()
        ids = {
            "a_sms_old": s0.id,
            "a_sms_active": s1.id,
            "a_sms_closed": s2.id,
            "a_sms_idle": s3.id,
            "a_whatsapp": w1.id,
            "a_whatsapp_failed": w2.id,
            "b_sms": bs1.id,
            "b_whatsapp_idle": bw1.id,
            "b_whatsapp": bw2.id,
        }
        seeded = Seeded(account_a.id, account_b.id, key_a, key_b, ids)
    engine.dispose()
    return seeded


def owner_count(url: str, sql: str, **params: Any) -> int:
    with psycopg.connect(dsn(url)) as connection:
        row = connection.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def one(connection: SqlConnection, query: str, *params: Any) -> Row:
    row = connection.execute(query, params or None).fetchone()
    assert row is not None
    return row


def visible(connection: SqlConnection, table: str) -> list[Row]:
    column = "id" if table == "accounts" else "account_id"
    return connection.execute(f"SELECT {column} AS account FROM {table}").fetchall()


# --- (a) direct SQL as the non-owner role ----------------------------------------------------


class TestDirectSql:
    @pytest.fixture
    def data(self, postgres_url: str) -> Seeded:
        return seed(postgres_url)

    def test_the_role_is_subject_to_rls(self, app_role: AppRole, postgres_url: str) -> None:
        with connect_as(app_role, postgres_url) as connection:
            row = connection.execute(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert row == {"rolsuper": False, "rolbypassrls": False}
            for table in TABLES:
                active = connection.execute("SELECT row_security_active(%s) AS on", (table,))
                assert active.fetchone() == {"on": True}, table

    @pytest.mark.parametrize("name", ["a", "b"])
    def test_an_account_sees_only_its_rows_in_every_table(
        self, name: str, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        account = data.account(name)
        with scoped(app_role, postgres_url, account) as connection:
            for table in TABLES:
                rows = visible(connection, table)
                column = "id" if table == "accounts" else "account_id"
                expected = owner_count(
                    postgres_url,
                    f"SELECT count(*) FROM {table} WHERE {column} = %(account)s",
                    account=account,
                )
                assert expected > 0, table
                assert len(rows) == expected, table
                assert {row["account"] for row in rows} == {account}, table

    def test_without_account_or_service_nothing_is_visible(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with connect_as(app_role, postgres_url) as connection:
            for table in TABLES:
                assert visible(connection, table) == [], table
            stats = connection.execute("SELECT get_sms_stats() AS s").fetchone()
            assert stats is not None
            assert stats["s"]["total_messages"] == 0

    def test_the_service_sees_every_row(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with service(app_role, postgres_url) as connection:
            for table in TABLES:
                total = owner_count(postgres_url, f"SELECT count(*) FROM {table}")
                assert len(visible(connection, table)) == total, table
            # Including the webhook log of a request no account owned.
            nulls = connection.execute(
                "SELECT count(*) AS n FROM webhook_logs WHERE account_id IS NULL"
            ).fetchone()
            assert nulls == {"n": 1}

    def test_an_account_setting_wins_over_the_service(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with service(app_role, postgres_url) as connection, connection.transaction():
            # As the API does: per transaction, on the service's connection.
            connection.execute("SELECT set_config('platica.account_id', %s, true)", (str(data.a),))
            for table in TABLES:
                assert {row["account"] for row in visible(connection, table)} == {data.a}
        with service(app_role, postgres_url) as connection:
            accounts = connection.execute("SELECT count(*) AS n FROM accounts").fetchone()
            assert accounts == {"n": 2}  # the transaction-local setting is gone

    def test_writing_another_accounts_rows_is_refused(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with scoped(app_role, postgres_url, data.a) as connection:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                connection.execute(
                    "INSERT INTO contacts (account_id, channel, address, opted_out, created_at)"
                    " VALUES (%s, 'sms', '+34611111111', false, now())",
                    (data.b,),
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                connection.execute("UPDATE conversations SET account_id = %s", (data.b,))
            # B's rows are not there to update or delete.
            updated = connection.execute(
                "UPDATE conversations SET status = 'closed' WHERE account_id = %s", (data.b,)
            )
            assert updated.rowcount == 0
            deleted = connection.execute("DELETE FROM messages WHERE account_id = %s", (data.b,))
            assert deleted.rowcount == 0
            # Its own rows it may write.
            connection.execute(
                "INSERT INTO contacts (account_id, channel, address, opted_out, created_at)"
                " VALUES (%s, 'sms', '+34611111111', false, now())",
                (data.a,),
            )
        assert (
            owner_count(
                postgres_url,
                "SELECT count(*) FROM conversations WHERE account_id = %(b)s AND status = 'active'",
                b=data.b,
            )
            == 3
        )
        assert owner_count(postgres_url, "SELECT count(*) FROM contacts") == 9

    def test_nothing_is_writable_without_account_or_service(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security")
        with connect_as(app_role, postgres_url) as connection, refused:
            connection.execute(
                "INSERT INTO accounts (id, name, created_at)"
                " VALUES (gen_random_uuid(), 'Intruder', now())"
            )


# --- (b) a live server connected as the non-owner role ---------------------------------------


@dataclass
class Api:
    server: LiveServer
    client: httpx.Client

    def get(self, token: str, path: str, **params: Any) -> httpx.Response:
        return self.client.get(
            self.server.url + path, params=params, headers={"Authorization": f"Bearer {token}"}
        )

    def post(self, token: str, path: str) -> httpx.Response:
        return self.client.post(
            self.server.url + path, headers={"Authorization": f"Bearer {token}"}
        )

    def json(self, token: str, path: str, **params: Any) -> Any:
        response = self.get(token, path, **params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


class TestLiveServerAsNonOwner:
    @pytest.fixture
    def accounts(self, postgres_url: str) -> Seeded:
        truncate_all(postgres_url)
        engine = sa.create_engine(db.sync_url(postgres_url))
        with Session(engine) as session:
            a, key_a = new_account(session, "Acme", SMS_NUMBER, WHATSAPP_NUMBER)
            b, key_b = new_account(session, "Bodega", B_SMS_NUMBER, B_WHATSAPP_NUMBER)
            session.commit()
            seeded = Seeded(a.id, b.id, key_a, key_b, {})
        engine.dispose()
        return seeded

    @pytest.fixture
    def api(
        self,
        accounts: Seeded,
        app_role: AppRole,
        postgres_url: str,
        live_server: Callable[..., LiveServer],
        client: httpx.Client,
    ) -> Iterator[Api]:
        with FakeTwilio() as twilio:
            settings = make_settings(
                app_role.url(postgres_url),
                PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
                TWILIO_API_BASE_URL=twilio.url,
            )
            yield Api(live_server(settings), client)

    def test_webhooks_store_and_the_worker_replies(
        self, api: Api, accounts: Seeded, postgres_url: str
    ) -> None:
        forms = [
            ("/webhook/sms", inbound_form("sms", sender="+34600000001", body="A sms")),
            ("/webhook/sms", inbound_form("sms", sender="+34600000002", to=B_SMS_NUMBER)),
            ("/webhook/whatsapp", inbound_form("whatsapp", sender="+34600000001")),
            (
                "/webhook/whatsapp",
                inbound_form("whatsapp", sender="+34600000003", to=B_WHATSAPP_NUMBER),
            ),
        ]
        for path, form in forms:
            response = post_signed(api.client, api.server.url, path, form)
            assert response.status_code == 200, response.text

        def replies() -> int:
            return owner_count(
                postgres_url,
                "SELECT count(*) FROM messages WHERE direction = 'outbound'"
                " AND status NOT IN ('pending', 'sending')",
            )

        wait_for(lambda: replies() == 4, "the worker to answer the four messages", seconds=45)
        for account in (accounts.a, accounts.b):
            assert (
                owner_count(
                    postgres_url,
                    "SELECT count(*) FROM messages WHERE account_id = %(account)s",
                    account=account,
                )
                == 4
            )
            assert (
                owner_count(
                    postgres_url,
                    "SELECT count(*) FROM webhook_logs WHERE account_id = %(account)s",
                    account=account,
                )
                == 2
            )

        for channel in ("sms", "whatsapp"):
            path = f"/api/{channel}/conversations"
            a_items = api.json(accounts.key_a, path)["items"]
            b_items = api.json(accounts.key_b, path)["items"]
            every = api.json(ADMIN_TOKEN, path)["items"]
            assert [item["account_id"] for item in a_items] == [str(accounts.a)]
            assert [item["account_id"] for item in b_items] == [str(accounts.b)]
            assert {item["account_id"] for item in every} == {str(accounts.a), str(accounts.b)}
            assert len(every) == 2
            a_stats = api.json(accounts.key_a, f"/api/{channel}/stats")
            admin_stats = api.json(ADMIN_TOKEN, f"/api/{channel}/stats")
            assert (a_stats["total_messages"], admin_stats["total_messages"]) == (2, 4)

            a_id, b_id = a_items[0]["id"], b_items[0]["id"]
            history = api.json(accounts.key_a, f"{path}/{a_id}/history")
            directions = [m["direction"] for m in history["messages"]]
            assert (directions[0], directions[-1]) == ("inbound", "outbound"), directions
            assert api.get(accounts.key_a, f"{path}/{b_id}/history").status_code == 404
            assert api.post(accounts.key_a, f"{path}/{b_id}/close").status_code == 404
            assert api.get(accounts.key_b, f"{path}/{a_id}/history").status_code == 404
            assert api.json(ADMIN_TOKEN, f"{path}/{b_id}/history")["conversation"]["id"] == b_id
            # An admin naming an account is held to it, by the database too.
            named = api.json(ADMIN_TOKEN, path, account_id=str(accounts.a))["items"]
            assert [item["id"] for item in named] == [a_id]

        assert (
            owner_count(postgres_url, "SELECT count(*) FROM conversations WHERE status = 'active'")
            == 4
        )

    def test_an_account_closes_its_own_conversations_only(
        self, api: Api, accounts: Seeded, postgres_url: str
    ) -> None:
        for to in (SMS_NUMBER, B_SMS_NUMBER):
            form = inbound_form("sms", sender="+34600000001", to=to)
            assert post_signed(api.client, api.server.url, "/webhook/sms", form).status_code == 200
        a_id = api.json(accounts.key_a, "/api/sms/conversations")["items"][0]["id"]
        b_id = api.json(accounts.key_b, "/api/sms/conversations")["items"][0]["id"]

        assert api.post(accounts.key_b, f"/api/sms/conversations/{a_id}/close").status_code == 404
        closed = api.post(accounts.key_a, f"/api/sms/conversations/{a_id}/close")

        assert closed.status_code == 200, closed.text
        with psycopg.connect(dsn(postgres_url)) as connection:
            statuses: dict[int, str] = dict(
                connection.execute("SELECT id, status FROM conversations").fetchall()
            )
        assert statuses == {a_id: "closed", b_id: "active"}


# --- (c) the SQL functions against the API ---------------------------------------------------


def sql_engagement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **row,
            "date": row["date"].isoformat(),
            "avg_response_time_ms": (
                None if row["avg_response_time_ms"] is None else float(row["avg_response_time_ms"])
            ),
        }
        for row in rows
    ]


class TestSqlFunctionsMatchTheApi:
    @pytest.fixture
    def data(self, postgres_url: str) -> Seeded:
        return seed(postgres_url)

    @pytest.fixture
    def api(
        self,
        data: Seeded,
        app_role: AppRole,
        postgres_url: str,
        live_server: Callable[..., LiveServer],
        client: httpx.Client,
    ) -> Api:
        settings = make_settings(
            app_role.url(postgres_url),
            PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
            TWILIO_ACCOUNT_SID=None,
            TWILIO_AUTH_TOKEN=None,
        )
        return Api(live_server(settings), client)

    def test_the_figures_are_the_intended_ones(self, data: Seeded, api: Api) -> None:
        """The API itself, against figures worked out by hand from seed()'s docstring."""
        assert api.json(data.key_a, "/api/sms/stats") == {
            "channel": "sms",
            "total_conversations": 4,
            "active_conversations": 2,
            "total_messages": 11,
            "incoming_messages": 5,
            "outgoing_messages": 6,
            # (1000 + 1500.25 + 2345.678 + 800) / 4 = 1411.482
            "avg_response_time_ms": 1411.5,
            "active_users_24h": 1,
            "active_users_7d": 2,
        }
        assert api.json(data.key_a, "/api/whatsapp/stats") == {
            "channel": "whatsapp",
            "total_conversations": 2,
            "active_conversations": 2,
            "total_messages": 5,
            "incoming_messages": 3,
            "outgoing_messages": 2,
            # (1200 + 950.5) / 2 = 1075.25 exactly: Python's round() gives the even 1075.2.
            "avg_response_time_ms": 1075.2,
            "active_users_24h": 2,
            "active_users_7d": 2,
        }
        every = api.json(ADMIN_TOKEN, "/api/whatsapp/stats")
        assert (every["total_conversations"], every["active_users_7d"]) == (4, 3)

    @pytest.mark.parametrize("channel", ["sms", "whatsapp"])
    @pytest.mark.parametrize("caller", ["a", "b", "admin", "admin_for_a"])
    def test_stats_and_engagement(
        self,
        channel: str,
        caller: str,
        data: Seeded,
        api: Api,
        app_role: AppRole,
        postgres_url: str,
    ) -> None:
        if caller in ("a", "b"):
            account = data.account(caller)
            token = data.key_a if caller == "a" else data.key_b
            params: dict[str, Any] = {}
            connection = scoped(app_role, postgres_url, account)
            argument = None  # RLS alone restricts the account's caller
        else:
            token, connection = ADMIN_TOKEN, service(app_role, postgres_url)
            argument = data.a if caller == "admin_for_a" else None
            params = {"account_id": str(data.a)} if argument else {}

        api_stats = api.json(token, f"/api/{channel}/stats", **params)
        with connection as sql:
            row = sql.execute(f"SELECT get_{channel}_stats(%s) AS s", (argument,)).fetchone()
            assert row is not None
            assert row["s"] == api_stats
            for period in (1, 7, 30, 45):
                api_days = api.json(token, f"/api/{channel}/engagement", days=period, **params)
                rows = sql.execute(
                    f"SELECT * FROM get_{channel}_engagement_metrics(%s, %s)", (period, argument)
                ).fetchall()
                assert sql_engagement(rows) == api_days["days"], period
                assert len(rows) == period
        assert api_stats["total_messages"] > 0

    def test_an_account_cannot_read_another_through_the_argument(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with scoped(app_role, postgres_url, data.a) as sql:
            row = sql.execute("SELECT get_sms_stats(%s) AS s", (data.b,)).fetchone()
            days_of_b = sql.execute(
                "SELECT sum(messages) AS n FROM get_sms_engagement_metrics(30, %s)", (data.b,)
            ).fetchone()
        assert row is not None
        assert (row["s"]["total_conversations"], row["s"]["total_messages"]) == (0, 0)
        assert days_of_b == {"n": 0}

    def test_rounding_is_pythons(self, app_role: AppRole, postgres_url: str) -> None:
        """platica_round_ms() is round(value, 1) to the digit: ties to even on the binary value."""
        generator = random.Random(20261122)
        values = [
            0.0, 0.04, 0.05, 0.15, 0.25, 0.35, 0.45, 1.05, 2.675, 1075.25, 1500.25, 1500.35,
            -0.25, -1500.25, 123456.789, 2.0**52, 2.0**52 + 2, 1e18, 5e-324, -7.5,
        ]  # fmt: skip
        values += [generator.uniform(0, 10_000) for _ in range(2000)]
        values += [round(generator.uniform(0, 10_000), 2) for _ in range(2000)]
        values += [struct.unpack("d", struct.pack("Q", generator.getrandbits(62)))[0]
                   for _ in range(500)]  # fmt: skip
        values = [v for v in values if math.isfinite(v)]
        with connect_as(app_role, postgres_url) as sql:
            rows = sql.execute(
                "SELECT v, platica_round_ms(v)::float8 AS r FROM unnest(%s::float8[]) AS v",
                (values,),
            ).fetchall()
        mismatches = [
            (row["v"], row["r"], round(row["v"], 1))
            for row in rows
            if row["r"] != round(row["v"], 1) and abs(row["v"]) < 2.0**52
        ]
        assert mismatches == []


# --- (d) cleanup, history, one contact's figures ---------------------------------------------


class TestMaintenanceFunctions:
    @pytest.fixture
    def data(self, postgres_url: str) -> Seeded:
        return seed(postgres_url)

    def statuses(self, url: str) -> dict[int, str]:
        with psycopg.connect(dsn(url)) as connection:
            return dict(connection.execute("SELECT id, status FROM conversations").fetchall())

    def test_cleanup_closes_only_idle_conversations_of_its_channel(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        ids = data.conversations
        before = self.statuses(postgres_url)
        with service(app_role, postgres_url) as sql:
            closed = sql.execute("SELECT cleanup_old_sms_conversations(7) AS n").fetchone()
            again = sql.execute("SELECT cleanup_old_sms_conversations(7) AS n").fetchone()
            closed_at = sql.execute(
                "SELECT closed_at > now() - interval '1 minute' AS recent FROM conversations"
                " WHERE id = %s",
                (ids["a_sms_idle"],),
            ).fetchone()
        assert (closed, again, closed_at) == ({"n": 1}, {"n": 0}, {"recent": True})
        after = self.statuses(postgres_url)
        assert after == {**before, ids["a_sms_idle"]: "closed"}
        # B's WhatsApp conversation idle for 40 days: not A's to close, then B's.
        with scoped(app_role, postgres_url, data.a) as sql:
            assert sql.execute("SELECT cleanup_old_whatsapp_conversations(30) AS n").fetchone() == {
                "n": 0
            }
        with scoped(app_role, postgres_url, data.b) as sql:
            assert sql.execute("SELECT cleanup_old_whatsapp_conversations(30) AS n").fetchone() == {
                "n": 1
            }
        assert self.statuses(postgres_url) == {**after, ids["b_whatsapp_idle"]: "closed"}

    def test_cleanup_without_an_argument_closes_after_30_days(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        """As the original seeds call it (item 9 of issue 12): p_days defaults to 30."""
        before = self.statuses(postgres_url)
        with service(app_role, postgres_url) as sql:
            sms = sql.execute("SELECT cleanup_old_sms_conversations() AS n").fetchone()
            whatsapp = sql.execute("SELECT cleanup_old_whatsapp_conversations() AS n").fetchone()
        # A's SMS conversation idle for 10 days stays; B's WhatsApp one idle for 40 is closed.
        assert (sms, whatsapp) == ({"n": 0}, {"n": 1})
        assert self.statuses(postgres_url) == {
            **before,
            data.conversations["b_whatsapp_idle"]: "closed",
        }

    def test_cleanup_refuses_a_bad_number_of_days(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        with service(app_role, postgres_url) as sql:
            for value in (0, -3, None):
                with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_days"):
                    sql.execute("SELECT cleanup_old_sms_conversations(%s::int)", (value,))
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_days"):
                sql.execute("SELECT * FROM get_sms_engagement_metrics(0)")
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit"):
                sql.execute("SELECT * FROM get_sms_conversation_history(1, 0)")
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_phone"):
                sql.execute("SELECT get_user_sms_stats(' ')")
        assert "closed" not in {
            self.statuses(postgres_url)[data.conversations[k]] for k in ("a_sms_idle", "b_sms")
        }

    def test_sms_history_is_oldest_first(
        self, data: Seeded, app_role: AppRole, postgres_url: str
    ) -> None:
        conversation = data.conversations["a_sms_active"]
        query = "SELECT id, direction, part, created_at FROM get_sms_conversation_history(%s, %s)"
        with scoped(app_role, postgres_url, data.a) as sql:
            every = sql.execute(query, (conversation, 500)).fetchall()
            newest = sql.execute(query, (conversation, 2)).fetchall()
            whatsapp = sql.execute(query, (data.conversations["a_whatsapp"], 500)).fetchall()
        with scoped(app_role, postgres_url, data.b) as sql:
            foreign = sql.execute(query, (conversation, 500)).fetchall()
        assert [(m["direction"], m["part"]) for m in every] == [
            ("inbound", 0),
            ("outbound", 0),
            ("outbound", 1),
            ("inbound", 0),
        ]
        assert [m["created_at"] for m in every] == sorted(m["created_at"] for m in every)
        assert newest == every[-2:]
        assert whatsapp == []  # not an SMS conversation
        assert foreign == []  # not B's

    def test_user_sms_stats(self, data: Seeded, app_role: AppRole, postgres_url: str) -> None:
        query = "SELECT get_user_sms_stats(%s, %s) AS s"
        with scoped(app_role, postgres_url, data.a) as sql:
            mine = one(sql, query, "+34600000001", None)["s"]
            opted = one(sql, query, "+34600000002", None)["s"]
            unknown = one(sql, query, "+34699999999", None)["s"]
        with service(app_role, postgres_url) as sql:
            everyone = one(sql, query, "+34600000001", None)["s"]
            only_b = one(sql, query, "+34600000001", data.b)["s"]
        first = datetime.fromisoformat(mine.pop("first_message_at"))
        last = datetime.fromisoformat(mine.pop("last_message_at"))
        assert mine == {
            "phone": "+34600000001",
            "conversations": 2,
            "messages": 6,
            "incoming_messages": 3,
            "outgoing_messages": 3,
            "opted_out": False,
        }
        assert last - first == days(20) - hours(2)
        assert (opted["messages"], opted["opted_out"]) == (3, True)
        assert unknown == {
            "phone": "+34699999999",
            "conversations": 0,
            "messages": 0,
            "incoming_messages": 0,
            "outgoing_messages": 0,
            "first_message_at": None,
            "last_message_at": None,
            "opted_out": False,
        }
        assert (everyone["conversations"], everyone["messages"]) == (3, 10)
        assert (only_b["conversations"], only_b["messages"]) == (1, 4)


# --- (e) Supabase: auth.uid() --------------------------------------------------------------


class TestSupabaseAuth:
    def test_auth_uid_selects_the_account(self, app_role: AppRole, postgres_url: str) -> None:
        user = uuid.uuid4()
        with throwaway_database(postgres_url) as url:
            with psycopg.connect(dsn(url), autocommit=True) as connection:
                # What Supabase's auth.uid() does, before the migrations run.
                connection.execute(
                    """
                    CREATE SCHEMA auth;
                    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
                        SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
                    $$;
                    """
                )
            db.upgrade(url)
            grant_app_role(url, app_role.name)
            data = seed(url)
            with psycopg.connect(dsn(url), autocommit=True) as connection:
                connection.execute(
                    "UPDATE accounts SET auth_user_id = %s WHERE id = %s", (user, data.b)
                )

            with connect_as(app_role, url, {"request.jwt.claim.sub": str(user)}) as sql:
                for table in TABLES:
                    assert {row["account"] for row in visible(sql, table)} == {data.b}, table
                stats = sql.execute("SELECT get_whatsapp_stats() AS s").fetchone()
            with connect_as(app_role, url, {"request.jwt.claim.sub": str(uuid.uuid4())}) as sql:
                strangers = [len(visible(sql, table)) for table in TABLES]
            with connect_as(app_role, url) as sql:
                anonymous = [len(visible(sql, table)) for table in TABLES]
            both = {"request.jwt.claim.sub": str(user), "platica.account_id": str(data.a)}
            with connect_as(app_role, url, both) as sql:
                # The API's setting names the account when both are there.
                overridden = {row["account"] for row in visible(sql, "messages")}

            assert stats is not None
            assert (stats["s"]["total_conversations"], stats["s"]["total_messages"]) == (2, 4)
            assert strangers == [0] * len(TABLES)
            assert anonymous == [0] * len(TABLES)
            assert overridden == {data.a}


# --- the migration itself ------------------------------------------------------------------


class TestMigration:
    def test_downgrade_removes_everything_it_added(self, postgres_url: str) -> None:
        with throwaway_database(postgres_url) as url:
            db.upgrade(url)
            installed = self.installed(url)
            assert installed["functions"] >= SQL_FUNCTIONS
            assert installed["policies"] == set(TABLES)
            assert installed["rls"] == set(TABLES)

            command.downgrade(db.alembic_config(url), "0002")

            assert self.installed(url) == {"functions": set(), "policies": set(), "rls": set()}
            db.upgrade(url)
            assert self.installed(url) == installed

    @staticmethod
    def installed(url: str) -> dict[str, set[str]]:
        with psycopg.connect(dsn(url)) as connection:
            functions = connection.execute(
                "SELECT proname FROM pg_proc JOIN pg_namespace n ON n.oid = pronamespace"
                " WHERE nspname = 'public' AND (proname LIKE 'platica%'"
                " OR proname LIKE 'get\\_%' OR proname LIKE 'cleanup\\_%')"
            ).fetchall()
            policies = connection.execute(
                "SELECT tablename FROM pg_policies WHERE schemaname = 'public'"
            ).fetchall()
            rls = connection.execute(
                "SELECT relname FROM pg_class WHERE relrowsecurity AND relkind = 'r'"
            ).fetchall()
        return {
            "functions": {row[0] for row in functions},
            "policies": {row[0] for row in policies},
            "rls": {row[0] for row in rls},
        }


async def test_the_application_connects_as_the_service(
    app_role: AppRole, postgres_url: str
) -> None:
    """db.create_engine() declares the service on each connection, for good (not undone by the
    pool's rollback), and a transaction's account setting still wins."""
    truncate_all(postgres_url)
    owner = sa.create_engine(db.sync_url(postgres_url))
    with Session(owner) as session:
        new_account(session, "Acme", SMS_NUMBER, WHATSAPP_NUMBER)
        session.commit()
    owner.dispose()

    engine = db.create_engine(app_role.url(postgres_url), pool_size=1)
    sessionmaker = db.create_sessionmaker(engine)
    seen = []
    try:
        for _ in range(3):
            async with sessionmaker() as session:
                seen.append(
                    await session.scalar(sa.text("SELECT current_setting('platica.service')"))
                )
                await session.rollback()
        async with db.session(sessionmaker) as session:
            await session.execute(
                sa.text("SELECT set_config('platica.account_id', :a, true)"),
                {"a": str(uuid.uuid4())},
            )
            seen.append(await session.scalar(sa.text("SELECT count(*) FROM accounts")))
        async with sessionmaker() as session:
            seen.append(await session.scalar(sa.text("SELECT count(*) FROM accounts")))
    finally:
        await engine.dispose()

    assert seen == ["on", "on", "on", 0, 1]
