"""The inbox at /: the conversations of both channels, newest activity first, updated live."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.conversations import operators
from platica.conversations.operators import ConversationView
from platica.dashboard import display, web
from platica.dashboard.alerts import backlog
from platica.dashboard.web import OperatorVisit, Visit, embed, int_param, live, render
from platica.models import Channel, ConversationStatus

router = APIRouter(include_in_schema=False)

INBOX_PAGE = 50
INBOX_MAX = 500
# Filters the service cannot apply in SQL (handed off, opted out) look at this many at most.
FILTER_SCAN = 2000


async def _matching(
    session: AsyncSession,
    channel: Channel,
    account_id: uuid.UUID | None,
    wanted: str | None,
    limit: int,
) -> tuple[list[ConversationView], bool]:
    """Up to `limit` conversations in state `wanted` (any when None), and whether there are more."""
    status = None
    if wanted == "closed":
        status = ConversationStatus.closed
    elif wanted is not None:
        status = ConversationStatus.active
    exact = wanted in (None, "closed")  # the service filters these itself
    now = datetime.now(UTC)
    found: list[ConversationView] = []
    cursor: str | None = None
    scanned = 0
    while True:
        views, cursor = await operators.list_conversations(
            session,
            channel,
            account_id,
            status=status,
            limit=limit + 1 if exact else 200,
            cursor=cursor,
        )
        scanned += len(views)
        found += [v for v in views if exact or display.conversation_state(v, now) == wanted]
        if len(found) > limit or cursor is None or scanned >= FILTER_SCAN:
            return found[:limit], len(found) > limit or cursor is not None


def conversation_row(visit: Visit, view: ConversationView) -> dict[str, Any]:
    """One line of the inbox (also the head of a conversation's page)."""
    conversation = view.conversation
    channel = str(conversation.channel)
    return {
        "id": conversation.id,
        "key": f"{channel}/{conversation.id}",
        "url": f"{visit.root}/conversations/{channel}/{conversation.id}",
        "channel": channel,
        "channel_name": display.CHANNEL_NAMES.get(channel, channel),
        "contact": display.masked(conversation.contact_address),
        "last_message": view.last_message,
        "last_at": conversation.last_message_at,
        "state": display.conversation_state(view),
        "awaiting": view.awaiting_reply,
        "flagged": view.flagged_at is not None,
        "parked": conversation.parked_at is not None,
        "account": conversation.account_id,
    }


async def _inbox(visit: Visit) -> dict[str, Any]:
    params = visit.request.query_params
    channel = params.get("channel", "")
    status = params.get("status", "")
    channels = [Channel(channel)] if channel in display.CHANNEL_NAMES else list(Channel)
    wanted = status if status in display.CONVERSATION_STATES else None
    limit = int_param(params.get("limit"), INBOX_PAGE, 1, INBOX_MAX)
    views: list[ConversationView] = []
    more = False
    async with visit.db() as session:
        for each in channels:
            found, has_more = await _matching(session, each, visit.me.account_id, wanted, limit)
            views += found
            more = more or has_more
        waiting = await backlog(session, visit.me.account_id)
    views.sort(key=lambda v: (v.conversation.last_message_at, v.conversation.id), reverse=True)
    more = more or len(views) > limit
    query = {
        "channel": channel if len(channels) == 1 else "",
        "status": wanted or "",
    }
    return {
        "rows": [conversation_row(visit, v) for v in views[:limit]],
        "filters": query,
        "more_url": (
            f"{visit.root}/?{httpx.QueryParams({**query, 'limit': limit + INBOX_PAGE})}"
            if more and limit < INBOX_MAX
            else None
        ),
        "poll_url": f"{visit.root}/?{httpx.QueryParams({**query, 'limit': limit, 'fragment': 'list'})}",
        "show_account": visit.me.account_id is None,
        "accounts": dict(visit.me.accounts),
        "backlog": waiting,
    }


@router.get("/")
async def inbox(visit: OperatorVisit) -> Response:
    """Conversations of both channels, newest activity first, updated live."""
    data = await _inbox(visit)
    options = {"live_id": "inbox-list", "every": web.POLL_SECONDS, "poll_url": data.pop("poll_url")}
    if visit.request.query_params.get("fragment") == "list":
        return live(visit, "_inbox_list.html", **options, **data)
    return render(
        visit,
        "inbox.html",
        "inbox",
        live=embed(visit, "_inbox_list.html", **options, **data),
        **data,
    )
