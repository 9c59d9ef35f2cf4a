"""The inbox at /: the conversations of both channels, newest activity first, updated live;
filtered by channel, state and a search, a page at a time ("Older →")."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter
from starlette.responses import Response

from platica.conversations.inbox import InboxFilter, list_conversations
from platica.conversations.operators import ConversationView
from platica.dashboard import display, web
from platica.dashboard.alerts import backlog
from platica.dashboard.i18n import _
from platica.dashboard.web import (
    OperatorVisit,
    Visit,
    embed,
    error_page,
    int_param,
    live,
    render,
)
from platica.errors import BadRequest
from platica.models import Channel

router = APIRouter(include_in_schema=False)

INBOX_PAGE = 50
INBOX_MAX = 500
SEARCH_MAX = 100


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
    """The page's rows and links; BadRequest for a cursor the inbox did not make."""
    params = visit.request.query_params
    channel = params.get("channel", "")
    status = params.get("status", "")
    search = (params.get("q") or "").strip()[:SEARCH_MAX]
    channels = (Channel(channel),) if channel in display.CHANNEL_NAMES else tuple(Channel)
    wanted = status if status in display.CONVERSATION_STATES else None
    limit = int_param(params.get("limit"), INBOX_PAGE, 1, INBOX_MAX)
    cursor = params.get("cursor") or None
    filters = InboxFilter(channels=channels, state=wanted, search=search or None)
    async with visit.db() as session:
        views, older = await list_conversations(
            session, visit.me.account_id, filters, limit=limit, cursor=cursor
        )
        waiting = await backlog(session, visit.me.account_id)
    query = {
        "channel": channel if len(channels) == 1 else "",
        "status": wanted or "",
        "q": search,
    }
    if limit != INBOX_PAGE:
        query["limit"] = str(limit)
    this_page = {**query, "cursor": cursor} if cursor else query
    return {
        "rows": [conversation_row(visit, v) for v in views],
        "filters": query,
        "older_url": f"{visit.root}/?{httpx.QueryParams({**query, 'cursor': older})}"
        if older
        else None,
        "newest_url": f"{visit.root}/?{httpx.QueryParams(query)}" if cursor else None,
        "poll_url": f"{visit.root}/?{httpx.QueryParams({**this_page, 'fragment': 'list'})}",
        "show_account": visit.me.account_id is None,
        "accounts": dict(visit.me.accounts),
        "backlog": waiting,
    }


@router.get("/")
async def inbox(visit: OperatorVisit) -> Response:
    """Conversations of both channels, newest activity first, updated live."""
    try:
        data = await _inbox(visit)
    except BadRequest:
        return error_page(
            visit,
            400,
            _("Broken link"),
            _(
                "This link to a page of the inbox is damaged: it was not made by this dashboard. "
                "Start again from the newest conversations."
            ),
        )
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
