"""Conversation listings for the dashboard's inbox and GET /api/{channel}/conversations: every
filter in SQL, newest activity first, a page at a time behind a keyset cursor, at any size.

The shape, per channel asked for:

    SELECT conversations.* FROM conversations
    WHERE account_id = :account AND channel = :channel AND <filters>
      AND (last_message_at, id) < (:at, :id)                        -- after a cursor
    ORDER BY last_message_at DESC, id DESC LIMIT :page + 1

which walks ix_conversations_account_channel_last (account_id, channel, last_message_at)
backwards from the cursor, sorting by id only the rows that share a timestamp, and stops as soon
as a page has matched. With both channels, each channel's page is taken that way and the two are
merged (UNION ALL) and cut to the page. Filters are conditions on that walk: a rare state reads
the conversations until a page has matched; a search also reads every message once (a hashed
subplan on PostgreSQL; there is no text index); an admin looking at every account has no
account to walk the index by, and the matching rows are sorted.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    String,
    and_,
    exists,
    literal,
    not_,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from platica.conversations import operators
from platica.conversations.operators import ConversationView
from platica.errors import BadRequest
from platica.models import Channel, Contact, Conversation, ConversationStatus, Message, utcnow

# How operators tell conversations apart, as the inbox filters them: closed wins, then opted
# out, then a live handoff (dashboard/display.py's conversation_state says the same of one).
STATES = ("active", "handed_off", "opted_out", "closed")
NEWEST_FIRST = (Conversation.last_message_at.desc(), Conversation.id.desc())


@dataclass(frozen=True, slots=True)
class InboxFilter:
    """Which conversations to list; every field left at its default lets all through."""

    channels: tuple[Channel, ...] = (Channel.whatsapp, Channel.sms)
    status: ConversationStatus | None = None  # the stored status, as the API filters it
    state: str | None = None  # one of STATES, as operators see a conversation
    # Part of the contact's number or name, or of any message's text, in any case; % and _
    # are plain characters.
    search: str | None = None


class Contains(FunctionElement[bool]):
    """Contains(text, like, glob): `text` holds a term, whatever the case of its letters.

    PostgreSQL folds with lower() and matches `like` ('%term%', lower case, % and _ escaped
    with /). SQLite's lower() folds ASCII only (not the Á of ÁNGEL), so there `glob` matches
    instead: a GLOB pattern with each letter as the class of its cases ('*[áÁ][nN]...*').
    Both patterns are parameters; each database is sent only its own.
    """

    type = Boolean()
    name = "contains"
    inherit_cache = True


@compiles(Contains)
def _contains(element: Contains, compiler: SQLCompiler, **kw: Any) -> str:
    text, like, _glob = element.clauses.clauses
    return f"(lower({compiler.process(text, **kw)}) LIKE {compiler.process(like, **kw)} ESCAPE '/')"


@compiles(Contains, "sqlite")
def _contains_on_sqlite(element: Contains, compiler: SQLCompiler, **kw: Any) -> str:
    text, _like, glob = element.clauses.clauses
    return f"({compiler.process(text, **kw)} GLOB {compiler.process(glob, **kw)})"


def _like_pattern(term: str) -> str:
    escaped = term.lower().replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


def _glob_pattern(term: str) -> str:
    parts = []
    for char in term:
        cases = dict.fromkeys(c for c in (char, char.lower(), char.upper()) if len(c) == 1)
        if len(cases) > 1 or char in "*?[":
            parts.append(f"[{''.join(cases)}]")  # in a class, * ? [ are plain characters
        else:
            parts.append(char)
    return f"*{''.join(parts)}*"


def _opted_out() -> ColumnElement[bool]:
    return exists().where(Contact.id == Conversation.contact_id, Contact.opted_out.is_(True))


def _handed_off(now: datetime) -> ColumnElement[bool]:
    """An operator has it: the AI paused, with no end or one still ahead."""
    return and_(
        Conversation.ai_enabled.is_(False),
        or_(Conversation.handoff_until.is_(None), Conversation.handoff_until > now),
    )


def state_condition(state: str, now: datetime) -> ColumnElement[bool]:
    """The conversations in `state` (one of STATES) at `now`."""
    if state == "closed":
        return Conversation.status == ConversationStatus.closed
    still_open = Conversation.status != ConversationStatus.closed
    if state == "opted_out":
        return and_(still_open, _opted_out())
    if state == "handed_off":
        return and_(still_open, not_(_opted_out()), _handed_off(now))
    if state == "active":
        return and_(still_open, not_(_opted_out()), not_(_handed_off(now)))
    raise ValueError(f"unknown conversation state {state!r}")


def search_condition(term: str) -> ColumnElement[bool]:
    """`term` in the contact's number or name or in a message of the conversation, in any case."""
    like = literal(_like_pattern(term), String())
    glob = literal(_glob_pattern(term), String())

    def found_in(text: Any) -> ColumnElement[bool]:
        return Contains(text, like, glob)

    return or_(
        found_in(Conversation.contact_address),
        exists().where(Contact.id == Conversation.contact_id, found_in(Contact.profile_name)),
        exists().where(Message.conversation_id == Conversation.id, found_in(Message.body)),
    )


def encode_cursor(conversation: Conversation) -> str:
    """The cursor of the page that follows `conversation`, the last of its page."""
    raw = f"{conversation.last_message_at.isoformat()}|{conversation.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position an `encode_cursor` cursor stands for; BadRequest for any other text."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, ident = raw.partition("|")
        parsed, number = datetime.fromisoformat(moment), int(ident)
        if parsed.tzinfo is None or not 0 < number < 2**63:
            raise ValueError("out of range")
        return parsed, number
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not one this API returned") from None


def _conditions(
    account_id: uuid.UUID | None, filters: InboxFilter, cursor: str | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if account_id is not None:
        conditions.append(Conversation.account_id == account_id)
    if filters.status is not None:
        conditions.append(Conversation.status == filters.status)
    if filters.state is not None:
        conditions.append(state_condition(filters.state, utcnow()))
    if filters.search:
        conditions.append(search_condition(filters.search))
    if cursor:
        moment, ident = decode_cursor(cursor)
        # Both databases seek the index to the timestamp with this; the id breaks ties.
        conditions.append(tuple_(Conversation.last_message_at, Conversation.id) < (moment, ident))
    return conditions


def _newest(channel: Channel, conditions: list[ColumnElement[bool]], limit: int) -> Select[Any]:
    return (
        select(Conversation)
        .where(Conversation.channel == channel, *conditions)
        .order_by(*NEWEST_FIRST)
        .limit(limit)
    )


async def list_conversations(
    session: AsyncSession,
    account_id: uuid.UUID | None,
    filters: InboxFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[ConversationView], str | None]:
    """A page of the conversations that pass `filters` (of every account when `account_id` is
    None), most recent activity first, and the cursor of the next page (None: it was the last).
    A cursor this function did not return raises BadRequest."""
    conditions = _conditions(account_id, filters, cursor)
    channels = tuple(dict.fromkeys(filters.channels))
    if not channels:
        return [], None
    statement = _newest(channels[0], conditions, limit + 1)
    if len(channels) > 1:
        pages = [_newest(channel, conditions, limit + 1).subquery() for channel in channels]
        merged = union_all(*(select(page.c.id) for page in pages)).subquery()
        statement = (
            select(Conversation)
            .where(Conversation.id.in_(select(merged.c.id)))
            .order_by(*NEWEST_FIRST)
            .limit(limit + 1)
        )
    rows = list(await session.scalars(statement))
    page, more = rows[:limit], len(rows) > limit
    views = await operators.views(session, page)  # built as for every listing
    return views, encode_cursor(page[-1]) if more else None
