"""The reply task's SQL: Core statements built once, run in db.transaction (durable when Twilio
may be called next).

The reply path runs a handful of statements per reply, many times a second, so it skips the
ORM's per-call statement building and identity map: every statement here is built at import
with `bindparam()` (SQLAlchemy then reuses its compiled form), and rows come back as small
dataclasses. Other code (the API, the dashboard) keeps using the ORM and
conversations/repository.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple, cast

from sqlalchemy import (
    Date,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    update,
)

from platica.db import Tx, Typed, any_of, fetch_all, none_of
from platica.jobs import queue
from platica.jobs.queue import Leased
from platica.media import store as media
from platica.models import (
    Account,
    Author,
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    Direction,
    Message,
    MessageMedia,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.ratelimit import Pace
from platica.replies.prompts import Said

_messages = cast(Table, Message.__table__)
_conversations_table = cast(Table, Conversation.__table__)
_contacts_table = cast(Table, Contact.__table__)
_configs_table = cast(Table, ChannelConfig.__table__)
_m = _messages.c
_configs = _configs_table.c
_contacts = _contacts_table.c
_conversations = _conversations_table.c
_media = cast(Table, MessageMedia.__table__).c


# --- Rows ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ConversationState:
    id: int
    account_id: uuid.UUID
    channel: Channel
    contact_id: int
    status: str
    ai_enabled: bool
    handoff_until: datetime | None
    # When the channel's daily token budget was spent, the busy message it got.
    busy_sent_at: datetime | None = None


@dataclass(slots=True)
class ContactState:
    id: int
    address: str
    opted_out: bool
    # When they last wrote: WhatsApp's 24-hour window runs from it (outreach/window.py).
    last_inbound_at: datetime | None = None


@dataclass(slots=True)
class Loaded:
    conversation: ConversationState
    config: ChannelConfig  # transient (in no session): prompts and shaping read it
    contact: ContactState
    # When the AI reply that RATE_LIMIT_PER_SENDER's window starts from went (its `limit`th
    # latest); None when there are fewer, or no such limit.
    paced_from: datetime | None = None


@dataclass(slots=True)
class Inbound:
    """An inbound message waiting for its reply."""

    id: int
    body: str
    attempts: int
    created_at: datetime
    # Written in the dashboard's simulator: what answers it is never sent to a real phone.
    simulated: bool = False
    # Some of its media items are still to fetch and understand (media/reading.py).
    media_pending: bool = False


@dataclass(slots=True)
class Outbound:
    """An outbound message to send (or being sent)."""

    id: int
    channel: Channel
    body: str
    status: MessageStatus
    attempts: int
    part: int
    created_at: datetime
    # Answers a simulated message: sent by the dry-run sender, never to a real phone.
    simulated: bool = False
    # While `sending`: when it was marked so for its current attempt (None: when it was
    # created). Twilio is asked whether that attempt landed among what it created since.
    sending_since: datetime | None = None
    # The inbound message it answers; None for what Plática starts (an operator's message, a
    # proactive message, a broadcast's).
    reply_to_id: int | None = None
    # Sent as a template: its ContentSid and variables (`body` is its text filled in).
    content_sid: str | None = None
    content_variables: dict[str, str] | None = None
    # Who wrote it (an operator, a broadcast: counted among what Plática starts).
    author: Author = Author.ai


def conversation_state(row: Leased) -> ConversationState:
    return ConversationState(
        row.id,
        row.account_id,
        Channel(row.channel),
        row.contact_id,
        row.status,
        row.ai_enabled,
        row.handoff_until,
        row.busy_sent_at,
    )


# --- Reading -------------------------------------------------------------------------------

_CONFIG_COLUMNS = [c for c in _configs if c.key not in ("created_at", "updated_at")]
_CONTACT_COLUMNS = [
    _contacts.id.label("contact__id"),
    _contacts.address.label("contact__address"),
    _contacts.opted_out.label("contact__opted_out"),
    _contacts.last_inbound_at.label("contact__last_inbound_at"),
]
_LOAD = (
    select(*_CONFIG_COLUMNS, *_CONTACT_COLUMNS)
    .select_from(_contacts_table)
    .join(
        _configs_table,
        and_(_configs.account_id == _contacts.account_id, _configs.channel == _contacts.channel),
    )
    .where(_contacts.id == bindparam("contact_id"))
)
# The same, with when the conversation's `nth` latest AI reply went (RATE_LIMIT_PER_SENDER):
# found walking the conversation's messages newest first, so it costs a few index entries.
_NTH_AI_REPLY = (
    select(_m.created_at)
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        _m.direction == Direction.outbound,
        _m.author == Author.ai,
        _m.part == 0,
    )
    .order_by(_m.id.desc())
    .offset(bindparam("nth", type_=Integer))
    .limit(1)
    .scalar_subquery()
)
_LOAD_PACED = _LOAD.add_columns(_NTH_AI_REPLY.label("paced_from"))


async def load(
    connection: Tx, conversation: ConversationState, *, paced_by: int | None = None
) -> Loaded | None:
    """The channel config and contact of `conversation`, or None if either is gone; with
    `paced_by`, when its `paced_by`th latest AI reply went."""
    if paced_by is None:
        row = (await connection.execute(_LOAD, {"contact_id": conversation.contact_id})).first()
    else:
        params = {
            "contact_id": conversation.contact_id,
            "conversation_id": conversation.id,
            "nth": paced_by - 1,
        }
        row = (await connection.execute(_LOAD_PACED, params)).first()
    if row is None:
        return None
    values = row._asdict()
    paced_from = values.pop("paced_from", None)
    contact = ContactState(
        values.pop("contact__id"),
        values.pop("contact__address"),
        values.pop("contact__opted_out"),
        values.pop("contact__last_inbound_at"),
    )
    return Loaded(conversation, ChannelConfig(**values), contact, paced_from)


class _WorkRow(NamedTuple):
    id: int
    direction: str
    channel: str
    body: str
    status: str
    attempts: int
    part: int
    simulated: bool
    created_at: datetime
    updated_at: datetime
    media_pending: bool
    reply_to_id: int | None
    content_sid: str | None
    content_variables: dict[str, str] | None
    author: str


_WORK = Typed(
    select(
        _m.id,
        _m.direction,
        _m.channel,
        _m.body,
        _m.status,
        _m.attempts,
        _m.part,
        _m.simulated,
        _m.created_at,
        _m.updated_at,
        exists().where(_media.message_id == _m.id, media.UNREAD).label("media_pending"),
        _m.reply_to_id,
        _m.content_sid,
        _m.content_variables,
        _m.author,
    )
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        queue.IS_WORK,
    )
    .order_by(_m.id),
    _WorkRow,
)


async def work(connection: Tx, conversation_id: int) -> tuple[list[Outbound], list[Inbound]]:
    """The conversation's unsent outbound messages and unanswered inbound ones, oldest first."""
    unsent: list[Outbound] = []
    pending: list[Inbound] = []
    for row in await fetch_all(connection, _WORK, {"conversation_id": conversation_id}):
        if row.direction == Direction.inbound:
            pending.append(
                Inbound(
                    row.id,
                    row.body,
                    row.attempts,
                    row.created_at,
                    row.simulated,
                    row.media_pending,
                )
            )
        else:
            unsent.append(
                Outbound(
                    row.id,
                    Channel(row.channel),
                    row.body,
                    MessageStatus(row.status),
                    row.attempts,
                    row.part,
                    row.created_at,
                    row.simulated,
                    # A `sending` message's updated_at is its mark (see record_error).
                    row.updated_at if row.status == MessageStatus.sending else None,
                    row.reply_to_id,
                    row.content_sid,
                    row.content_variables,
                    Author(row.author),
                )
            )
    return unsent, pending


class _HistoryRow(NamedTuple):
    id: int
    reply_to_id: int | None
    direction: str
    body: str
    has_media: bool


_HISTORY = Typed(
    select(
        _m.id,
        _m.reply_to_id,
        _m.direction,
        _m.body,
        # Read with the message (an index probe), so that a conversation without media pays
        # no statement for them.
        exists().where(_media.message_id == _m.id).label("has_media"),
    )
    .where(
        _m.conversation_id == bindparam("conversation_id"),
        none_of(_m.status, [MessageStatus.failed, MessageStatus.undelivered]),
        or_(_m.reply_state.is_(None), _m.reply_state != ReplyState.skipped),
        # Up to the batch being answered (and the replies to what came before it): not what
        # the contact wrote after it, which a later round deals with (a keyword, say).
        or_(_m.id <= bindparam("up_to"), _m.reply_to_id < bindparam("up_to")),
    )
    .order_by(_m.id.desc())
    .limit(bindparam("limit")),
    _HistoryRow,
)


def _in_conversation_order(row: _HistoryRow) -> tuple[int, int, int]:
    """Where a message belongs in the conversation: a reply right after the message it answers
    (a keyword's confirmation, stored after what the contact wrote next, comes before it)."""
    if row.direction == Direction.outbound and row.reply_to_id is not None:
        return (row.reply_to_id, 1, row.id)
    return (row.id, 0, row.id)


async def history(
    connection: Tx,
    conversation_id: int,
    limit: int,
    up_to: int,
    pictures_of: Sequence[int] = (),
) -> list[Said]:
    """The conversation's last `limit` messages worth showing the model, up to the message
    `up_to` (the last of the batch being answered), in the conversation's order, oldest first,
    with their media; the images of the messages `pictures_of` with their bytes."""
    params = {"conversation_id": conversation_id, "limit": limit, "up_to": up_to}
    rows = sorted(await fetch_all(connection, _HISTORY, params), key=_in_conversation_order)
    with_media = [row.id for row in rows if row.has_media]
    attachments: dict[int, list[media.Attachment]] = {}
    pictures: dict[int, list[media.Picture]] = {}
    if with_media:
        for item in await fetch_all(connection, media.ATTACHMENTS, {"ids": with_media}):
            attachments.setdefault(item.message_id, []).append(item)
        wanted = [message_id for message_id in pictures_of if message_id in attachments]
        if wanted:
            for picture in await fetch_all(connection, media.PICTURES, {"ids": wanted}):
                pictures.setdefault(picture.message_id, []).append(picture)
    return [
        Said(
            Direction(row.direction),
            row.body,
            attachments.get(row.id, ()),
            pictures.get(row.id, ()),
        )
        for row in rows
    ]


# --- Writing -------------------------------------------------------------------------------

_COUNT_ATTEMPT = update(_messages).where(any_of(_m.id, "ids")).values(attempts=bindparam("attempt"))


async def count_attempt(connection: Tx, ids: Sequence[int], attempt: int) -> None:
    """Record that the LLM is being asked for the `attempt`th time about these messages."""
    await connection.execute(_COUNT_ATTEMPT, {"ids": list(ids), "attempt": attempt})


_OLDEST = select(func.min(_m.created_at)).where(any_of(_m.id, "ids"))


async def oldest(connection: Tx, ids: Sequence[int]) -> datetime:
    """When the oldest of these messages arrived."""
    found: datetime = (await connection.execute(_OLDEST, {"ids": list(ids)})).scalar()
    return found


_SETTLE = (
    update(_messages)
    .where(any_of(_m.id, "ids"), _m.reply_state == ReplyState.pending)
    .values(reply_state=bindparam("state"), note=bindparam("new_note"), updated_at=bindparam("now"))
)


async def settle(connection: Tx, ids: Sequence[int], state: ReplyState, note: str | None) -> None:
    """Mark pending inbound messages answered or skipped, with `note`."""
    await connection.execute(
        _SETTLE, {"ids": list(ids), "state": state, "new_note": note, "now": utcnow()}
    )


_RESUME_AI = (
    update(_conversations_table)
    .where(_conversations.id == bindparam("conversation_id"))
    .values(ai_enabled=True, handoff_until=None)
)


async def resume_ai(connection: Tx, conversation_id: int) -> None:
    await connection.execute(_RESUME_AI, {"conversation_id": conversation_id})


_SET_OPTED_OUT = (
    update(_contacts_table)
    .where(_contacts.id == bindparam("contact_id"))
    .values(opted_out=bindparam("value"), opted_out_at=bindparam("at"))
)


async def set_opted_out(connection: Tx, contact_id: int, opted_out: bool) -> None:
    await connection.execute(
        _SET_OPTED_OUT,
        {"contact_id": contact_id, "value": opted_out, "at": utcnow() if opted_out else None},
    )


_SET_BUSY_SENT = (
    update(_conversations_table)
    .where(_conversations.id == bindparam("conversation_id"))
    .values(busy_sent_at=bindparam("at"))
)


async def set_busy_sent(connection: Tx, conversation_id: int, at: datetime) -> None:
    """Record that the conversation got the busy message (its channel's budget is spent)."""
    await connection.execute(_SET_BUSY_SENT, {"conversation_id": conversation_id, "at": at})


_today = bindparam("today", type_=Date)
_ADD_TOKENS = (
    update(_configs_table)
    .where(
        _configs.account_id == bindparam("config_account"),
        _configs.channel == bindparam("config_channel"),
    )
    .values(
        tokens_used=case(
            (_configs.tokens_day == _today, _configs.tokens_used + bindparam("tokens")),
            else_=bindparam("tokens"),
        ),
        tokens_day=_today,
    )
)


async def add_tokens(
    connection: Tx, account_id: uuid.UUID, channel: Channel, tokens: int, today: date
) -> None:
    """Count tokens the channel's replies spent today towards its daily budget."""
    await connection.execute(
        _ADD_TOKENS,
        {"config_account": account_id, "config_channel": channel, "tokens": tokens, "today": today},
    )


_accounts_table = cast(Table, Account.__table__)
_ACCOUNT_PACE = (
    select(_accounts_table.c.reply_pace_at)
    .where(_accounts_table.c.id == bindparam("account_id"))
    .with_for_update()
)
_SET_ACCOUNT_PACE = (
    update(_accounts_table)
    .where(_accounts_table.c.id == bindparam("account"))
    .values(reply_pace_at=bindparam("paced_at"))
)


async def take_account_pace(
    connection: Tx, account_id: uuid.UUID, pace: Pace, now: datetime
) -> float:
    """Take a place in the account's pace of AI replies (RATE_LIMIT_PER_ACCOUNT): 0 when the
    reply may go now (counted), else seconds to wait (nothing counted). Locks the account row
    until the transaction ends, so that every process counts on one value."""
    paced_at = (await connection.execute(_ACCOUNT_PACE, {"account_id": account_id})).scalar()
    taken, wait = pace.take(paced_at, now)
    if taken is not None:
        await connection.execute(_SET_ACCOUNT_PACE, {"account": account_id, "paced_at": taken})
    return wait
