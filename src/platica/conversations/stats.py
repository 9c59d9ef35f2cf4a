"""The figures of /api/{channel}/stats and /engagement, computed in SQL on either database.

The SQL functions installed on PostgreSQL (get_whatsapp_stats() and friends) compute the same
figures with the same definitions; tests hold the two to each other.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, Float, case, cast, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql import ColumnElement

from platica.models import (
    Author,
    Channel,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    ReplyState,
    utcnow,
)


def _milliseconds_between(session: AsyncSession, later: Any, earlier: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier) * 1000
    return (func.julianday(later) - func.julianday(earlier)) * 86_400_000


def _day(session: AsyncSession, column: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _scoped(column: Any, account_id: uuid.UUID | None) -> list[ColumnElement[bool]]:
    return [] if account_id is None else [column == account_id]


def _replies(channel: Channel, account_id: uuid.UUID | None) -> tuple[Any, Any, list[Any]]:
    """AI replies (or their fallback), first parts only, joined to the message they answer."""
    reply, answered = aliased(Message), aliased(Message)
    conditions = [
        reply.channel == channel,
        reply.direction == Direction.outbound,
        reply.author.in_([Author.ai, Author.system]),
        reply.part == 0,
        answered.id == reply.reply_to_id,
        answered.reply_state == ReplyState.answered,
        *_scoped(reply.account_id, account_id),
    ]
    return reply, answered, conditions


async def channel_stats(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID | None
) -> dict[str, Any]:
    now = utcnow()
    conversations = await session.execute(
        select(
            func.count(),
            func.count().filter(Conversation.status == ConversationStatus.active),
        ).where(Conversation.channel == channel, *_scoped(Conversation.account_id, account_id))
    )
    total_conversations, active_conversations = conversations.one()
    inbound = Message.direction == Direction.inbound
    messages = await session.execute(
        select(
            func.count(),
            func.count().filter(inbound),
            func.count().filter(Message.direction == Direction.outbound),
        ).where(Message.channel == channel, *_scoped(Message.account_id, account_id))
    )
    total, incoming, outgoing = messages.one()

    def wrote_since(moment: datetime) -> ColumnElement[Any]:
        return case((Message.created_at >= moment, Conversation.contact_id))

    users = await session.execute(
        select(
            func.count(distinct(wrote_since(now - timedelta(hours=24)))),
            func.count(distinct(wrote_since(now - timedelta(days=7)))),
        )
        .select_from(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.channel == channel,
            Message.direction == Direction.inbound,
            Message.created_at >= now - timedelta(days=7),
            *_scoped(Message.account_id, account_id),
        )
    )
    users_24h, users_7d = users.one()
    reply, answered, conditions = _replies(channel, account_id)
    average = await session.scalar(
        select(
            func.avg(
                cast(_milliseconds_between(session, reply.created_at, answered.created_at), Float)
            )
        ).where(*conditions)
    )
    return {
        "channel": channel.value,
        "total_conversations": total_conversations,
        "active_conversations": active_conversations,
        "total_messages": total,
        "incoming_messages": incoming,
        "outgoing_messages": outgoing,
        "avg_response_time_ms": round(float(average), 1) if average is not None else None,
        "active_users_24h": users_24h,
        "active_users_7d": users_7d,
    }


async def engagement(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID | None, days: int
) -> list[dict[str, Any]]:
    """One entry per day for the last `days` days (UTC), oldest first, empty days included."""
    today = utcnow().date()
    first_day = today - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=utcnow().tzinfo)
    day = _day(session, Message.created_at).label("day")
    rows = await session.execute(
        select(
            day,
            func.count(),
            func.count().filter(Message.direction == Direction.inbound),
            func.count().filter(Message.direction == Direction.outbound),
            func.count(distinct(Message.conversation_id)),
        )
        .where(
            Message.channel == channel,
            Message.created_at >= since,
            *_scoped(Message.account_id, account_id),
        )
        .group_by(day)
    )
    by_day: dict[date, dict[str, Any]] = {}
    for value, total, incoming, outgoing, conversations in rows:
        by_day[_as_date(value)] = {
            "messages": total,
            "incoming_messages": incoming,
            "outgoing_messages": outgoing,
            "conversations": conversations,
        }
    reply, answered, conditions = _replies(channel, account_id)
    reply_day = _day(session, reply.created_at).label("day")
    replies = await session.execute(
        select(
            reply_day,
            func.count(),
            func.avg(
                cast(_milliseconds_between(session, reply.created_at, answered.created_at), Float)
            ),
        )
        .where(*conditions, reply.created_at >= since)
        .group_by(reply_day)
    )
    reply_stats = {_as_date(value): (count, average) for value, count, average in replies}
    result = []
    for offset in range(days):
        current = first_day + timedelta(days=offset)
        counts = by_day.get(
            current,
            {"messages": 0, "incoming_messages": 0, "outgoing_messages": 0, "conversations": 0},
        )
        count, average = reply_stats.get(current, (0, None))
        result.append(
            {
                "date": current,
                **counts,
                "replies": count,
                "avg_response_time_ms": round(float(average), 1) if average is not None else None,
            }
        )
    return result


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
