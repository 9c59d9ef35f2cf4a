"""What the operators must know on every page: a spent daily token budget, and the backlog of
messages waiting for their reply."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from platica.dashboard import display
from platica.dashboard.i18n import _
from platica.models import Account, ChannelConfig, Message, ReplyState, utcnow

# A backlog whose oldest message has waited this long gets a banner (below it, the inbox shows
# it quietly).
SLOW_BACKLOG_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Backlog:
    """Inbound messages waiting for their reply (the AI's, or an operator's during a handoff)."""

    waiting: int
    oldest: datetime | None

    @property
    def oldest_seconds(self) -> float:
        return (utcnow() - self.oldest).total_seconds() if self.oldest else 0.0


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # "budget" or "backlog": the banner's style
    text: str
    link: str | None = None  # a page of the dashboard that helps


async def backlog(session: AsyncSession, account_id: uuid.UUID | None) -> Backlog:
    statement = select(func.count(), func.min(Message.created_at)).where(
        Message.reply_state == ReplyState.pending
    )
    if account_id is not None:
        statement = statement.where(Message.account_id == account_id)
    waiting, oldest = (await session.execute(statement)).one()
    return Backlog(waiting or 0, oldest)


async def alerts(session: AsyncSession, account_id: uuid.UUID | None) -> list[Alert]:
    """The banners for the operator looking at `account_id` (None: every account)."""
    found: list[Alert] = []
    today = utcnow().date()
    statement = (
        select(ChannelConfig.channel, ChannelConfig.daily_token_budget, Account.name)
        .join(Account, Account.id == ChannelConfig.account_id)
        .where(
            ChannelConfig.daily_token_budget.is_not(None),
            ChannelConfig.tokens_day == today,
            ChannelConfig.tokens_used >= ChannelConfig.daily_token_budget,
        )
        .order_by(Account.name, ChannelConfig.channel)
    )
    if account_id is not None:
        statement = statement.where(ChannelConfig.account_id == account_id)
    for row in await session.execute(statement):
        whose = "" if account_id is not None else f" ({row.name})"
        channel = display.CHANNEL_NAMES.get(str(row.channel), str(row.channel))
        found.append(
            Alert(
                "budget",
                _(
                    "%(channel)s: today's token budget (%(tokens)s tokens) is spent. Customers "
                    "get the busy message, once per conversation, until midnight UTC. Raise the "
                    "budget in Settings to answer them again.",
                    channel=channel + whose,
                    tokens=display.decimal(row.daily_token_budget),
                ),
                "/settings",
            )
        )
    waiting = await backlog(session, account_id)
    if waiting.waiting and waiting.oldest_seconds >= SLOW_BACKLOG_SECONDS:
        minutes = int(waiting.oldest_seconds // 60)
        found.append(
            Alert(
                "backlog",
                _(
                    "%(messages)s waiting for a reply, the oldest for %(minutes)s min: replies "
                    "are being paced, or operators have the conversations.",
                    messages=display.count_messages(waiting.waiting),
                    minutes=minutes,
                ),
                "/",
            )
        )
    return found
