"""REST API for what Plática starts: proactive messages and broadcasts (SPEC §7)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse

from platica.api.auth import CallerDep, own_account
from platica.config import strip_channel_prefix
from platica.deps import StateDep
from platica.errors import BadRequest
from platica.jobs.runner import commit_and_wake
from platica.models import Channel
from platica.outreach import broadcasts
from platica.outreach.proactive import Proactive, send_proactive
from platica.schemas import (
    BroadcastCreate,
    BroadcastRead,
    MessageRead,
    ProactiveMessage,
    RecipientIn,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid credentials"},
    404: {"description": "The account has no number on this channel, or no such broadcast"},
    422: {"description": "Invalid input: a missing template variable, an unknown template…"},
}
router = APIRouter(prefix="/api/{channel}", tags=["outreach"], responses=ERRORS)

ChannelPath = Annotated[Channel, Path(description="whatsapp or sms")]
BroadcastId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The broadcast's id")]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Any unique string (a UUID): a retry with the same key sends nothing "
        "again and answers with the first result.",
    ),
]


@router.post(
    "/messages",
    response_model=MessageRead,
    status_code=202,
    responses={
        200: {"description": "A retry with the same Idempotency-Key: the first request's message"},
        409: {
            "description": "The contact opted out, or free text outside WhatsApp's 24-hour "
            "window (send a template)"
        },
    },
)
async def send_message(
    channel: ChannelPath,
    request: ProactiveMessage,
    caller: CallerDep,
    state: StateDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Any:
    """Send a message to a contact who may have no conversation yet (one is opened): free text,
    or an approved template with its variables. Queued for sending (202); the AI answers the
    contact's reply as usual."""
    if idempotency_key is not None and not idempotency_key.strip():
        raise BadRequest("Idempotency-Key must not be blank")
    account_id = own_account(caller)
    sent = await send_proactive(
        caller.session,
        account_id,
        channel,
        Proactive(
            to=strip_channel_prefix(request.to),
            body=request.body,
            template=request.template,
            variables=request.variables,
        ),
        idempotency_key,
    )
    body = MessageRead.model_validate(sent.message).model_dump(mode="json")
    if not sent.created:
        await caller.session.rollback()
        return JSONResponse(body, status_code=202, headers={"Idempotent-Replayed": "true"})
    await commit_and_wake(caller.session, state.runner, sent.message.conversation_id)
    return JSONResponse(body, status_code=202)


def _recipients(request: BroadcastCreate) -> list[broadcasts.Recipient]:
    return [
        broadcasts.Recipient(item.to, item.variables)
        if isinstance(item, RecipientIn)
        else broadcasts.Recipient(item)
        for item in request.recipients
    ]


@router.post("/broadcasts", response_model=BroadcastRead, status_code=202)
async def create_broadcast(
    channel: ChannelPath, request: BroadcastCreate, caller: CallerDep, state: StateDep
) -> dict[str, Any]:
    """Send one message to many, in the background at the channel's `broadcast_mps`: each
    recipient once, even across crashes; opted-out contacts and invalid numbers are skipped and
    counted. Follow it with GET .../broadcasts/{id}."""
    broadcast = await broadcasts.create(
        caller.session,
        own_account(caller),
        channel,
        broadcasts.NewBroadcast(
            recipients=_recipients(request),
            body=request.body,
            template=request.template,
            variables=request.variables,
            name=request.name,
        ),
    )
    shown = await broadcasts.view(caller.session, broadcast)
    await commit_and_wake(caller.session, None)
    if state.broadcaster is not None:
        state.broadcaster.poke()
    return shown


@router.get("/broadcasts", response_model=list[BroadcastRead])
async def list_broadcasts(
    channel: ChannelPath,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[dict[str, Any]]:
    """The latest broadcasts, newest first, with their progress."""
    found = await broadcasts.list_broadcasts(caller.session, channel, caller.account_id, limit)
    return [await broadcasts.view(caller.session, broadcast) for broadcast in found]


@router.get("/broadcasts/{broadcast_id}", response_model=BroadcastRead)
async def get_broadcast(
    channel: ChannelPath, broadcast_id: BroadcastId, caller: CallerDep
) -> dict[str, Any]:
    """A broadcast's progress: each recipient counted once, by how far it got."""
    broadcast = await broadcasts.get_broadcast(
        caller.session, channel, caller.account_id, broadcast_id
    )
    return await broadcasts.view(caller.session, broadcast)


@router.post(
    "/broadcasts/{broadcast_id}/cancel",
    response_model=BroadcastRead,
    responses={409: {"description": "Every recipient was handed over already"}},
)
async def cancel_broadcast(
    channel: ChannelPath, broadcast_id: BroadcastId, caller: CallerDep
) -> dict[str, Any]:
    """Stop the broadcast: recipients not yet handed over are never sent (idempotent)."""
    broadcast = await broadcasts.get_broadcast(
        caller.session, channel, caller.account_id, broadcast_id
    )
    await broadcasts.cancel(caller.session, broadcast)
    shown = await broadcasts.view(caller.session, broadcast)
    await commit_and_wake(caller.session, None)
    return shown
