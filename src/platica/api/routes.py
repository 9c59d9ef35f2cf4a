"""REST API under /api/{channel}: stats, engagement, conversations, history, steering, media,
config."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.api.auth import CallerDep, own_account
from platica.conversations import inbox, operators, stats
from platica.deps import StateDep
from platica.jobs.runner import TaskRunner, commit_and_wake
from platica.media import serving
from platica.models import Channel, Conversation, ConversationStatus
from platica.schemas import (
    ChannelConfigRead,
    ChannelConfigUpdate,
    ConversationRead,
    EngagementRead,
    HistoryRead,
    ManualReply,
    MessageRead,
    Page,
    StatsRead,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid credentials"},
    404: {"description": "No such conversation for this account"},
    422: {"description": "Invalid input; the message says which field and why"},
}
router = APIRouter(prefix="/api/{channel}", tags=["api"], responses=ERRORS)

ChannelPath = Annotated[Channel, Path(description="whatsapp or sms")]
ConversationId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The conversation's id")]
MediaId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The media item's id (history)")]


@router.get("/stats", response_model=StatsRead)
async def get_stats(channel: ChannelPath, caller: CallerDep) -> dict[str, Any]:
    """Totals for the channel: conversations, messages, response time, active users."""
    return await stats.channel_stats(caller.session, channel, caller.account_id)


@router.get("/engagement", response_model=EngagementRead)
async def get_engagement(
    channel: ChannelPath,
    caller: CallerDep,
    days: Annotated[
        int, Query(ge=1, le=366, description="How many days back, today included")
    ] = 30,
) -> dict[str, Any]:
    """Per day (UTC): messages, conversations, AI replies and their average response time."""
    return {
        "channel": channel.value,
        "days": await stats.engagement(caller.session, channel, caller.account_id, days),
    }


@router.get("/conversations", response_model=Page[ConversationRead])
async def list_conversations(
    channel: ChannelPath,
    caller: CallerDep,
    status: Annotated[ConversationStatus | None, Query(description="active or closed")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Conversations, most recent activity first, a page at a time."""
    views, next_cursor = await inbox.list_conversations(
        caller.session,
        caller.account_id,
        inbox.InboxFilter(channels=(channel,), status=status),
        limit=limit,
        cursor=cursor,
    )
    return {"items": [v.as_dict() for v in views], "next_cursor": next_cursor}


@router.get("/conversations/{conversation_id}/history", response_model=HistoryRead)
async def get_history(
    channel: ChannelPath,
    conversation_id: ConversationId,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=2000, description="The newest N messages")] = 500,
) -> dict[str, Any]:
    """The conversation and its messages, oldest first, with delivery states and AI metadata."""
    conversation = await operators.get_conversation(
        caller.session, channel, caller.account_id, conversation_id
    )
    view = await operators.view(caller.session, conversation)
    messages = await operators.history(caller.session, conversation, limit)
    return {
        "conversation": view.as_dict(),
        "messages": [MessageRead.model_validate(m) for m in messages],
    }


async def _change(
    caller: CallerDep,
    channel: Channel,
    conversation_id: int,
    change: Callable[[AsyncSession, Conversation], Awaitable[Conversation]],
    wake: TaskRunner | None = None,
) -> dict[str, Any]:
    """Apply an operator's change to one of the caller's conversations; its new view, committed
    (and, given the runner, its reply task queued once committed)."""
    conversation = await operators.get_conversation(
        caller.session, channel, caller.account_id, conversation_id
    )
    await change(caller.session, conversation)
    view = await operators.view(caller.session, conversation)
    await commit_and_wake(caller.session, wake, conversation.id if wake else None)
    return view.as_dict()


@router.post("/conversations/{conversation_id}/close", response_model=ConversationRead)
async def close_conversation(
    channel: ChannelPath, conversation_id: ConversationId, caller: CallerDep
) -> dict[str, Any]:
    """Close the conversation (idempotent); the contact's next message opens a new one."""
    return await _change(caller, channel, conversation_id, operators.close)


@router.post(
    "/conversations/{conversation_id}/messages",
    response_model=MessageRead,
    status_code=202,
    responses={409: {"description": "The conversation is closed or the contact opted out"}},
)
async def send_manual_reply(
    channel: ChannelPath,
    conversation_id: ConversationId,
    reply: ManualReply,
    caller: CallerDep,
    state: StateDep,
) -> MessageRead:
    """Reply by hand: the message is queued for sending and the AI is paused (handoff)."""
    conversation = await operators.get_conversation(
        caller.session, channel, caller.account_id, conversation_id
    )
    message = await operators.manual_reply(caller.session, conversation, reply.body)
    await commit_and_wake(caller.session, state.runner, conversation.id)
    return MessageRead.model_validate(message)


@router.post("/conversations/{conversation_id}/handoff", response_model=ConversationRead)
async def hand_off(
    channel: ChannelPath, conversation_id: ConversationId, caller: CallerDep, state: StateDep
) -> dict[str, Any]:
    """Pause the AI on this conversation for the channel's handoff_timeout_minutes; a contact
    who wrote in the last 24 hours gets the channel's handoff notice."""
    return await _change(
        caller, channel, conversation_id, operators.hand_off_and_notify, state.runner
    )


@router.post("/conversations/{conversation_id}/resume", response_model=ConversationRead)
async def resume(
    channel: ChannelPath, conversation_id: ConversationId, caller: CallerDep, state: StateDep
) -> dict[str, Any]:
    """Give the conversation back to the AI, which answers what the contact wrote meanwhile."""
    return await _change(caller, channel, conversation_id, operators.resume, state.runner)


@router.post("/conversations/{conversation_id}/retry", response_model=ConversationRead)
async def retry(
    channel: ChannelPath, conversation_id: ConversationId, caller: CallerDep, state: StateDep
) -> dict[str, Any]:
    """Retry a parked conversation (its reply task kept crashing): unpark it and run its work
    again now. Idempotent."""
    return await _change(caller, channel, conversation_id, operators.retry, state.runner)


@router.get(
    "/media/{media_id}",
    response_class=Response,
    responses={
        200: {
            "description": "The item's bytes with its content type: pictures and sound inline, "
            "anything else as an attachment",
            "content": {"application/octet-stream": {}},
        },
        404: {"description": "No such media item for this account, or no bytes to serve"},
        502: {"description": "Twilio's copy could not be fetched just now; try again later"},
    },
)
async def get_media(
    channel: ChannelPath, media_id: MediaId, caller: CallerDep, state: StateDep, request: Request
) -> Response:
    """A media item's bytes (voice note, image, document): Plática's copy, or Twilio's fetched."""
    item = await serving.find_media(caller.session, caller.account_id, channel, media_id)
    # The read is over: no database connection waits while Twilio answers.
    await caller.session.rollback()
    return await serving.media_response(item, state.media, request.headers)


@router.get("/config", response_model=ChannelConfigRead)
async def get_config(channel: ChannelPath, caller: CallerDep) -> Any:
    """The account's settings for this channel."""
    return await operators.get_config(caller.session, channel, own_account(caller))


@router.put("/config", response_model=ChannelConfigRead)
async def put_config(channel: ChannelPath, update: ChannelConfigUpdate, caller: CallerDep) -> Any:
    """Change the account's settings for this channel; fields left out keep their value."""
    config = await operators.get_config(caller.session, channel, own_account(caller))
    for name in update.model_fields_set:
        setattr(config, name, getattr(update, name))
    await caller.session.flush()
    response = jsonable_encoder(ChannelConfigRead.model_validate(config))
    await commit_and_wake(caller.session, None)
    return response
