"""Fixtures for the operators' API tests: a live server with the fake OpenAI and Twilio, an API
key for the default account, a second account with its own numbers, and seeded data."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from platica import db
from platica.accounts import create_account, create_api_key
from platica.models import (
    Account,
    Author,
    Channel,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)
from tests.conftest import Database, LiveServer, make_settings
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER, inbound_form, post_signed
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.polling import wait_for

T = TypeVar("T")

ADMIN_TOKEN = "admin-3b1f9a7c-5d2e8f40a1b6c9"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
# The second account's numbers (the default account owns SMS_NUMBER and WHATSAPP_NUMBER).
B_SMS_NUMBER = "+15005550001"
B_WHATSAPP_NUMBER = "+14155550123"
DEADLINE_SECONDS = 20.0
_DEFAULT = object()


def in_session(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction on the test database (from a sync test)."""

    async def main() -> T:
        engine = db.create_engine(database_url)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def supabase_token(
    user_id: uuid.UUID | str,
    *,
    secret: str = JWT_SECRET,
    expires_in: timedelta = timedelta(hours=1),
    audience: str = "authenticated",
) -> str:
    now = utcnow()
    claims = {
        "sub": str(user_id),
        "aud": audience,
        "role": "authenticated",
        "iat": int((now - timedelta(minutes=5)).timestamp()),
        "exp": int((now + expires_in).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Tenant:
    """An account as the tests see it: its id, an API key and its numbers."""

    id: uuid.UUID
    key: str
    sms_number: str
    whatsapp_number: str

    def number(self, channel: str) -> str:
        return self.whatsapp_number if channel == "whatsapp" else self.sms_number


@dataclass
class Api:
    server: LiveServer
    openai: FakeOpenAI
    twilio: FakeTwilio
    database: Database
    database_url: str
    client: httpx.Client
    a: Tenant
    _b: Tenant | None = field(default=None, repr=False)

    # -- the API ---------------------------------------------------------------------------------

    def call(
        self, method: str, path: str, *, token: Any = _DEFAULT, **kwargs: Any
    ) -> httpx.Response:
        """`token` defaults to account A's API key; None sends no Authorization header."""
        key = self.a.key if token is _DEFAULT else token
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        response = self.client.request(method, self.server.url + path, headers=headers, **kwargs)
        if response.status_code >= 500:
            self.quiesce()
        return response

    def quiesce(self) -> None:
        """Wait until the server has finished every request, logging included.

        After a 5xx the server thread goes on to log the traceback; CPython 3.11 builds traceback
        carets with `ast`, whose recursion guard is shared between threads, so pytest reporting
        the failure at the same moment can die with "SystemError: AST constructor recursion
        depth mismatch" (an INTERNALERROR that ends the whole run).
        """
        wait_for(lambda: not self.server.server.server_state.tasks, "the server to go idle")

    def get(self, path: str, *, token: Any = _DEFAULT, **params: Any) -> httpx.Response:
        return self.call("GET", path, token=token, params=params)

    def post(
        self, path: str, json: Any = None, *, token: Any = _DEFAULT, **params: Any
    ) -> httpx.Response:
        return self.call("POST", path, token=token, json=json, params=params)

    def put(
        self, path: str, json: Any = None, *, token: Any = _DEFAULT, **params: Any
    ) -> httpx.Response:
        return self.call("PUT", path, token=token, json=json, params=params)

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, (response.status_code, response.text)
        return response.json()

    # -- accounts --------------------------------------------------------------------------------

    @property
    def b(self) -> Tenant:
        """A second account, with its own numbers and API key (made on first use)."""
        if self._b is None:

            async def make(session: AsyncSession) -> Tenant:
                account, key = await create_account(
                    session,
                    "Panadería B",
                    whatsapp_number=B_WHATSAPP_NUMBER,
                    sms_number=B_SMS_NUMBER,
                )
                return Tenant(account.id, key, B_SMS_NUMBER, B_WHATSAPP_NUMBER)

            self._b = in_session(self.database_url, make)
        return self._b

    def link_supabase_user(self, account_id: uuid.UUID) -> uuid.UUID:
        user_id = uuid.uuid4()

        async def link(session: AsyncSession) -> None:
            await session.execute(
                update(Account).where(Account.id == account_id).values(auth_user_id=user_id)
            )

        in_session(self.database_url, link)
        return user_id

    # -- webhooks and the database ---------------------------------------------------------------

    def send(
        self, channel: str = "sms", *, tenant: Tenant | None = None, **form: Any
    ) -> dict[str, str]:
        """A signed inbound webhook to `tenant`'s number (account A's by default)."""
        if tenant is not None:
            form.setdefault("to", tenant.number(channel))
        data = inbound_form(channel, **form)
        response = post_signed(self.client, self.server.url, f"/webhook/{channel}", data)
        assert response.status_code == 200, response.text
        return data

    def configure(self, **values: Any) -> None:
        """Change every channel config of every account (read afresh by each reply task)."""
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self.database.execute(f"UPDATE channel_configs SET {assignments}", **values)

    def conversation_id(
        self, contact: str = CONTACT, channel: str = "sms", status: str = "active"
    ) -> int:
        found = self.database.scalar(
            "SELECT id FROM conversations WHERE contact_address = :contact"
            " AND channel = :channel AND status = :status ORDER BY id DESC",
            contact=contact,
            channel=channel,
            status=status,
        )
        assert found is not None, f"no {status} {channel} conversation with {contact}"
        return int(found)

    def settled(self) -> bool:
        """Nothing pending: every inbound handled, every outbound past sending."""
        return not self.database.scalar(
            "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
            " OR (direction = 'outbound' AND status IN ('pending', 'sending'))"
        )

    def reply_states(self, conversation_id: int) -> list[str]:
        rows = self.database.rows(
            "SELECT reply_state FROM messages WHERE direction = 'inbound'"
            " AND conversation_id = :id ORDER BY id",
            id=conversation_id,
        )
        return [row.reply_state for row in rows]

    def bodies_sent_to(self, number: str) -> list[str]:
        return [m["body"] for m in self.twilio.sent if m["to"].removeprefix("whatsapp:") == number]


@pytest.fixture
def api(database_url: str, live_server: Callable[..., LiveServer]) -> Iterator[Api]:
    """Plática on a live server with an admin token, Supabase JWTs, the fake OpenAI and the fake
    Twilio (posting status callbacks), debounce 0; account A is the default account."""
    with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
        settings = make_settings(
            database_url,
            OPENAI_BASE_URL=openai.url,
            OPENAI_API_KEY="sk-local-0123456789",
            TWILIO_API_BASE_URL=twilio.url,
            PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
            SUPABASE_JWT_SECRET=JWT_SECRET,
        )
        server = live_server(settings)
        database = Database(database_url)
        account_id = uuid.UUID(
            str(database.scalar("SELECT id FROM accounts WHERE name = 'default'"))
        )
        key = in_session(database_url, lambda session: create_api_key(session, account_id))
        tenant = Tenant(account_id, key, SMS_NUMBER, WHATSAPP_NUMBER)
        with httpx.Client(timeout=30) as client:
            created = Api(server, openai, twilio, database, database_url, client, tenant)
            created.configure(debounce_seconds=0)
            yield created
        database.engine.dispose()


# -- seeded data: rows with known timestamps, for exact figures -----------------------------------


@dataclass
class Said:
    """One seeded message: `author` is contact, ai, system or operator; `at` when it was stored."""

    author: str
    at: datetime
    body: str = "…"


async def seed_conversation(
    session: AsyncSession,
    account_id: uuid.UUID,
    channel: str,
    address: str,
    messages: list[Said],
    *,
    status: str = "active",
) -> int:
    """A contact, a conversation and its messages, stored as the pipeline would store them: each
    AI (or fallback) reply answers the contact's latest message before it."""
    kind = Channel(channel)
    contact = Contact(account_id=account_id, channel=kind, address=address, opted_out=False)
    session.add(contact)
    await session.flush()
    first, last = messages[0].at, messages[-1].at
    conversation = Conversation(
        account_id=account_id,
        channel=kind,
        contact_id=contact.id,
        contact_address=address,
        status=ConversationStatus(status),
        ai_enabled=True,
        created_at=first,
        last_message_at=last,
        closed_at=last if status == "closed" else None,
    )
    session.add(conversation)
    await session.flush()
    latest_inbound: Message | None = None
    for said in messages:
        inbound = said.author == "contact"
        message = Message(
            account_id=account_id,
            conversation_id=conversation.id,
            channel=kind,
            direction=Direction.inbound if inbound else Direction.outbound,
            author=Author(said.author),
            body=said.body,
            media=[],
            status=MessageStatus.received if inbound else MessageStatus.delivered,
            reply_state=ReplyState.pending if inbound else None,
            part=0,
            attempts=0,
            created_at=said.at,
            updated_at=said.at,
        )
        if said.author in ("ai", "system") and latest_inbound is not None:
            message.reply_to_id = latest_inbound.id
            latest_inbound.reply_state = ReplyState.answered
        session.add(message)
        await session.flush()
        if inbound:
            latest_inbound = message
    return conversation.id
