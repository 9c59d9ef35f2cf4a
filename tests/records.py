"""Test data in the database: accounts (with their channel configs), contacts, conversations,
messages and their media items as Plática stores them, and sessions to store them with.

Here rather than in factories.py: factories.py is Twilio's side (the forms it posts and their
signatures, no database; the benchmark and the fakes import it), this is the database's.

The `*_row` builders make unsaved rows, usable with a sync Session as well; the async `add_*`
helpers store them (flushed, not committed: whoever opened the session commits). Defaults are
a plausible row; each test passes the columns its scenario is about. `add_queued_reply` answers
a webhook's message in direct SQL, for tests that hold no session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from platica import db
from platica.accounts import DEFAULT_ACCOUNT_NAME, create_api_key
from platica.models import (
    Account,
    Author,
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    Direction,
    MediaKind,
    MediaState,
    Message,
    MessageMedia,
    MessageStatus,
    ReplyState,
    utcnow,
)
from tests.conftest import Database
from tests.factories import CONTACT

T = TypeVar("T")


# -- sessions -------------------------------------------------------------------------------------


@asynccontextmanager
async def open_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database (db.create_engine), disposed of when the block ends."""
    engine = db.create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def in_session(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction on the test database (from a sync test)."""

    async def main() -> T:
        async with (
            open_engine(database_url) as engine,
            db.session(db.create_sessionmaker(engine)) as session,
        ):
            return await work(session)

    return asyncio.run(main())


def default_account_key(database_url: str) -> tuple[uuid.UUID, str]:
    """The default account (made by the server for the configured numbers) and a new API key
    of it."""

    async def create(session: AsyncSession) -> tuple[uuid.UUID, str]:
        account_id = await session.scalar(
            select(Account.id).where(Account.name == DEFAULT_ACCOUNT_NAME)
        )
        assert account_id is not None, "no default account (has a server started?)"
        return account_id, await create_api_key(session, account_id)

    return in_session(database_url, create)


# -- rows -----------------------------------------------------------------------------------------


def account_row(name: str = "Panadería", **columns: Any) -> Account:
    """An account, its id already chosen (so that its configs can be built before a flush)."""
    return Account(id=uuid.uuid4(), name=name, **columns)


def config_rows(
    account: Account, numbers: Mapping[Channel, str], **columns: Any
) -> list[ChannelConfig]:
    """A channel config of `account` per (channel, number) of `numbers`, each with `columns`."""
    return [
        ChannelConfig(account_id=account.id, channel=channel, phone_number=number, **columns)
        for channel, number in numbers.items()
    ]


def contact_row(
    account_id: uuid.UUID, address: str = CONTACT, channel: Channel = Channel.sms, **columns: Any
) -> Contact:
    """A contact who wrote just now (WhatsApp's window open), unless `last_inbound_at` says."""
    columns.setdefault("last_inbound_at", utcnow())
    return Contact(account_id=account_id, channel=channel, address=address, **columns)


def conversation_row(contact: Contact, **columns: Any) -> Conversation:
    """A conversation with `contact` (stored: it needs the contact's id)."""
    return Conversation(
        account_id=contact.account_id,
        channel=contact.channel,
        contact_id=contact.id,
        contact_address=contact.address,
        **columns,
    )


def message_row(
    conversation: Conversation, direction: Direction = Direction.inbound, **columns: Any
) -> Message:
    """A message in `conversation` (stored): by default an inbound one from the contact waiting
    for its reply, or an outbound one the AI wrote, delivered."""
    inbound = direction is Direction.inbound
    values: dict[str, Any] = {
        "account_id": conversation.account_id,
        "conversation_id": conversation.id,
        "channel": conversation.channel,
        "direction": direction,
        "author": Author.contact if inbound else Author.ai,
        "body": "Hola",
        "status": MessageStatus.received if inbound else MessageStatus.delivered,
        "reply_state": ReplyState.pending if inbound else None,
    }
    values.update(columns)
    return Message(**values)


def media_row(message: Message, kind: MediaKind, position: int = 0, **columns: Any) -> MessageMedia:
    """A media item of `message` (stored), understood by default. Bytes kept (`content`) go
    with their `size_bytes`, as the reply task stores them."""
    values: dict[str, Any] = {
        "account_id": message.account_id,
        "message_id": message.id,
        "position": position,
        "kind": kind,
        "state": MediaState.understood,
    }
    values.update(columns)
    if values.get("content") is not None:
        values.setdefault("size_bytes", len(values["content"]))
    return MessageMedia(**values)


# -- stored ---------------------------------------------------------------------------------------


async def add_account(
    session: AsyncSession,
    name: str = "Panadería",
    *,
    numbers: Mapping[Channel, str] | None = None,
    config: Mapping[str, Any] | None = None,
    **columns: Any,
) -> Account:
    """An account with `columns`, owning a channel config (with `config`'s columns) per
    (channel, number) of `numbers`."""
    account = account_row(name, **columns)
    session.add(account)
    await session.flush()
    session.add_all(config_rows(account, numbers or {}, **(config or {})))
    await session.flush()
    return account


async def add_conversation(
    session: AsyncSession,
    account_id: uuid.UUID,
    address: str = CONTACT,
    channel: Channel = Channel.sms,
    **columns: Any,
) -> Conversation:
    """A conversation with `columns`, with a new contact at `address`."""
    contact = contact_row(account_id, address, channel)
    session.add(contact)
    await session.flush()
    conversation = conversation_row(contact, **columns)
    session.add(conversation)
    await session.flush()
    return conversation


async def add_message(
    session: AsyncSession,
    conversation: Conversation,
    direction: Direction = Direction.inbound,
    **columns: Any,
) -> Message:
    """A message in `conversation` (see message_row)."""
    message = message_row(conversation, direction, **columns)
    session.add(message)
    await session.flush()
    return message


async def add_media(
    session: AsyncSession, message: Message, kind: MediaKind, position: int = 0, **columns: Any
) -> MessageMedia:
    """A media item of `message` (see media_row)."""
    item = media_row(message, kind, position, **columns)
    session.add(item)
    await session.flush()
    return item


def add_queued_reply(database: Database, sid: str) -> None:
    """An AI reply with Twilio SID `sid`, queued at Twilio, to the one message in the database
    (stored by a webhook)."""
    database.execute(
        "INSERT INTO messages (account_id, conversation_id, channel, direction, author, body,"
        " twilio_sid, status, part, attempts, created_at, updated_at)"
        " SELECT account_id, conversation_id, channel, 'outbound', 'ai', 'Hola!',"
        " :sid, 'queued', 0, 0, created_at, updated_at FROM messages",
        sid=sid,
    )
