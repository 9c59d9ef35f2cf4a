"""REST API for an account's message templates under /api/{channel}/templates: list them, sync
them from Twilio's Content API, add one by hand, delete one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.api.auth import CallerDep, own_account
from platica.deps import StateDep
from platica.errors import Conflict, NotFound
from platica.jobs.runner import commit_and_wake
from platica.models import Channel, Template, TemplateApproval
from platica.outreach import content
from platica.outreach.templates import (
    MAX_VALUE_CHARS,
    MAX_VARIABLES,
    SID,
    sendable,
    variables_of,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid credentials"},
    422: {"description": "Invalid input; the message says which field and why"},
}
router = APIRouter(prefix="/api/{channel}", tags=["templates"], responses=ERRORS)

# Twilio's language codes: "es", "en_US", "pt-BR".
LANGUAGE = r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$"
ChannelPath = Annotated[Channel, Path(description="whatsapp or sms")]
TemplateId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The template's id")]


class TemplateRead(BaseModel):
    """A template as the channel sees it: `sendable` says whether it may be sent there (on
    WhatsApp only once approved)."""

    id: int
    sid: str
    name: str
    language: str
    body: str
    variables: list[str] = Field(description="Its variables' names, in the order the text uses")
    samples: dict[str, str] = Field(description="A sample value of each variable (Twilio's)")
    approval: TemplateApproval
    rejection_reason: str | None
    source: str = Field(description="twilio (synced) or manual (added by hand)")
    sendable: bool
    synced_at: datetime | None
    updated_at: datetime


class TemplateList(BaseModel):
    items: list[TemplateRead]


class TemplateSyncRead(TemplateList):
    """What a sync changed, and the account's templates afterwards."""

    added: int
    updated: int
    removed: int
    total: int


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class TemplateCreate(BaseModel):
    """A template added by hand (one Twilio has, that the credentials here cannot list)."""

    model_config = ConfigDict(extra="forbid")

    sid: str = Field(pattern=SID.pattern, description="Twilio's ContentSid: HX and 32 hex digits")
    name: Annotated[Text, Field(max_length=200)]
    language: Annotated[Text, Field(max_length=16, pattern=LANGUAGE)] = "es"
    body: Annotated[
        Text,
        Field(
            max_length=1600, description="The text, its variables as {{1}}, {{2}}… (or {{name}})"
        ),
    ]
    variables: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")],
        Annotated[str, Field(max_length=MAX_VALUE_CHARS)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_VARIABLES,
        description='Sample values: {"1": "Ana", "2": "A-1043"}',
    )
    approval: TemplateApproval = TemplateApproval.approved

    @field_validator("name", "body")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("variables")
    @classmethod
    def _no_nul_samples(cls, value: dict[str, str]) -> dict[str, str]:
        if any("\x00" in sample for sample in value.values()):
            raise ValueError("samples must not contain NUL characters")
        return value


def template_read(template: Template, channel: Channel) -> TemplateRead:
    return TemplateRead(
        id=template.id,
        sid=template.sid,
        name=template.name,
        language=template.language,
        body=template.body,
        variables=variables_of(template),
        samples={str(name): str(value) for name, value in (template.variables or {}).items()},
        approval=TemplateApproval(template.approval),
        rejection_reason=template.rejection_reason,
        source=template.source,
        sendable=sendable(template, channel),
        synced_at=template.synced_at,
        updated_at=template.updated_at,
    )


async def _templates(
    session: AsyncSession, account_id: uuid.UUID, channel: Channel
) -> list[TemplateRead]:
    rows = await session.scalars(
        select(Template)
        .where(Template.account_id == account_id)
        .order_by(Template.name, Template.language, Template.id)
    )
    return [template_read(row, channel) for row in rows]


@router.get("/templates", response_model=TemplateList)
async def list_templates(
    channel: ChannelPath,
    caller: CallerDep,
    sendable_only: Annotated[
        bool,
        Query(alias="sendable", description="Only those that may be sent on this channel"),
    ] = False,
) -> dict[str, Any]:
    """The account's templates, by name, each saying whether it may be sent on this channel."""
    items = await _templates(caller.session, own_account(caller), channel)
    return {"items": [item for item in items if item.sendable or not sendable_only]}


@router.post(
    "/templates/sync",
    response_model=TemplateSyncRead,
    responses={
        409: {"description": "Twilio is not configured"},
        502: {"description": "Twilio refused the credentials, failed or could not be reached"},
    },
)
async def sync_templates(channel: ChannelPath, caller: CallerDep, state: StateDep) -> Any:
    """Read the templates from Twilio's Content API and make the account's synced ones match:
    new ones added, changed ones updated, ones gone from Twilio deleted (those added by hand
    are kept)."""
    account_id = own_account(caller)
    # Twilio first: no database transaction waits while it answers.
    remote = await content.fetch_templates(state.settings)
    summary = await content.apply_templates(caller.session, account_id, remote)
    items = await _templates(caller.session, account_id, channel)
    await commit_and_wake(caller.session, None)
    return {
        "added": summary.added,
        "updated": summary.updated,
        "removed": summary.removed,
        "total": summary.total,
        "items": items,
    }


@router.post(
    "/templates",
    response_model=TemplateRead,
    status_code=201,
    responses={409: {"description": "The account already has a template with this sid"}},
)
async def create_template(channel: ChannelPath, template: TemplateCreate, caller: CallerDep) -> Any:
    """Add a template by hand (source "manual"; a sync leaves it alone)."""
    account_id = own_account(caller)
    session = caller.session
    taken = await session.scalar(
        select(Template.id).where(Template.account_id == account_id, Template.sid == template.sid)
    )
    duplicate = Conflict(f"this account already has the template {template.sid}")
    if taken is not None:
        raise duplicate
    row = Template(
        account_id=account_id,
        sid=template.sid,
        name=template.name,
        language=template.language,
        body=template.body,
        variables=template.variables,
        approval=template.approval,
        source=content.SOURCE_MANUAL,
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        # Added at the same moment by another request.
        await session.rollback()
        raise duplicate from None
    await session.refresh(row)
    response = jsonable_encoder(template_read(row, channel))
    await commit_and_wake(session, None)
    return response


@router.delete(
    "/templates/{template_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "No such template for this account"}},
)
async def delete_template(
    channel: ChannelPath, template_id: TemplateId, caller: CallerDep
) -> Response:
    """Delete one of the account's templates (a synced one comes back at the next sync if
    Twilio still has it)."""
    account_id = own_account(caller)
    row = await caller.session.scalar(
        select(Template).where(Template.id == template_id, Template.account_id == account_id)
    )
    if row is None:
        raise NotFound(f"no template {template_id} for this account")
    await caller.session.delete(row)
    await commit_and_wake(caller.session, None)
    return Response(status_code=204)
