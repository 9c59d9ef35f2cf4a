"""Conversations stored straight into the test database with Core, in bulk, for the inbox's tests:
each a contact, its conversation and one message from the contact."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select

from platica.models import (
    Account,
    Author,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)
from tests.conftest import Database

HANDOFFS: dict[str, timedelta | None] = {
    "open": None,
    "ahead": timedelta(days=1),
    "lapsed": timedelta(hours=-1),
}


@dataclass(frozen=True)
class Seed:
    """One conversation to store; `handoff` pauses the AI: "open" (no end), "ahead" (ends
    tomorrow) or "lapsed" (ended an hour ago)."""

    address: str
    body: str = "Hola, ¿tienen envío a Monterrey?"
    channel: str = "sms"
    name: str | None = None
    status: str = "active"
    opted_out: bool = False
    handoff: str | None = None


def _handoff_until(seed: Seed, now: datetime) -> datetime | None:
    ahead = HANDOFFS[seed.handoff] if seed.handoff else None
    return now + ahead if ahead is not None else None


def add_account(database: Database, name: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    with database.engine.begin() as connection:
        connection.execute(insert(Account), [{"id": account_id, "name": name}])
    return account_id


def default_account(database: Database) -> uuid.UUID:
    return uuid.UUID(str(database.scalar("SELECT id FROM accounts WHERE name = 'default'")))


def store(
    database: Database,
    account_id: uuid.UUID,
    seeds: list[Seed],
    *,
    times: list[datetime] | None = None,
) -> list[int]:
    """Store `seeds` (their numbers unique per channel) and return their conversations' ids in
    the same order. Their last activity is `times`, or a second apart, the first the oldest."""
    now = utcnow()
    if times is None:
        start = now - timedelta(days=1)
        times = [start + timedelta(seconds=index) for index in range(len(seeds))]
    with database.engine.begin() as connection:
        connection.execute(
            insert(Contact),
            [
                {
                    "account_id": account_id,
                    "channel": seed.channel,
                    "address": seed.address,
                    "profile_name": seed.name,
                    "opted_out": seed.opted_out,
                }
                for seed in seeds
            ],
        )
        contacts = {
            (row.channel, row.address): row.id
            for row in connection.execute(
                select(Contact.id, Contact.channel, Contact.address).where(
                    Contact.account_id == account_id
                )
            )
        }
        contact_ids = [contacts[(seed.channel, seed.address)] for seed in seeds]
        connection.execute(
            insert(Conversation),
            [
                {
                    "account_id": account_id,
                    "channel": seed.channel,
                    "contact_id": contact_id,
                    "contact_address": seed.address,
                    "status": seed.status,
                    "ai_enabled": seed.handoff is None,
                    "handoff_until": _handoff_until(seed, now),
                    "created_at": at,
                    "last_message_at": at,
                    "closed_at": at if seed.status == "closed" else None,
                }
                for seed, contact_id, at in zip(seeds, contact_ids, times, strict=True)
            ],
        )
        conversations = {
            row.contact_id: row.id
            for row in connection.execute(
                select(Conversation.contact_id, Conversation.id).where(
                    Conversation.account_id == account_id
                )
            )
        }
        ids = [conversations[contact_id] for contact_id in contact_ids]
        connection.execute(
            insert(Message),
            [
                {
                    "account_id": account_id,
                    "conversation_id": conversation_id,
                    "channel": seed.channel,
                    "direction": Direction.inbound,
                    "author": Author.contact,
                    "body": seed.body,
                    "status": MessageStatus.received,
                    "reply_state": ReplyState.answered,
                    "created_at": at,
                    "updated_at": at,
                }
                for seed, conversation_id, at in zip(seeds, ids, times, strict=True)
            ],
        )
    return ids
