"""Templates read from Twilio's Content API (through the official SDK) and synced into an
account's `templates`.

Twilio's credentials are the service's, so every Plática account sees the same contents; each
account keeps its own copy, to which templates may also be added by hand (source "manual", which a
sync never deletes). A sync makes the account's synced templates exactly what Twilio lists:
new ones added, changed ones updated, ones gone from Twilio deleted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from platica.config import Settings
from platica.errors import BadGateway, Conflict
from platica.logging import get_logger
from platica.models import Account, Template, TemplateApproval, utcnow

log = get_logger(__name__)

# The whole listing, every page: the SDK's own timeout never reaches aiohttp (see sender.py).
CONTENT_TIMEOUT_SECONDS = 30.0
# Twilio's largest page: an account's templates in as few requests as possible.
PAGE_SIZE = 1000
SOURCE_TWILIO = "twilio"
SOURCE_MANUAL = "manual"
# Where the text is when a content has no twilio/text type: the first of these keys found.
TEXT_KEYS = ("body", "title")


class TwilioNotConfigured(Conflict):
    """Templates cannot be synced without Twilio's credentials (409)."""

    code = "twilio_not_configured"

    def __init__(self) -> None:
        super().__init__(
            "Twilio is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to sync "
            "templates from Twilio's Content API, or add them by hand"
        )


class TwilioCredentialsRefused(BadGateway):
    """Twilio answered 401/403 to the Content API: the credentials are wrong or lack access."""

    code = "twilio_credentials_refused"

    def __init__(self, status: int) -> None:
        super().__init__(
            f"Twilio refused the credentials ({status}): check TWILIO_ACCOUNT_SID and "
            f"TWILIO_AUTH_TOKEN"
        )
        self.status = status


class TwilioUnavailable(BadGateway):
    """Twilio's Content API could not be reached or failed (timeout, 429, 5xx): try again."""

    code = "twilio_unavailable"
    retryable = True


class ContentItem(Protocol):
    """What a sync reads of a content (the SDK's ContentAndApprovalsInstance has it all)."""

    @property
    def sid(self) -> str | None: ...
    @property
    def friendly_name(self) -> str | None: ...
    @property
    def language(self) -> str | None: ...
    @property
    def variables(self) -> dict[str, object] | None: ...
    @property
    def types(self) -> dict[str, object] | None: ...
    @property
    def approval_requests(self) -> dict[str, object] | None: ...


@dataclass(frozen=True, slots=True)
class RemoteTemplate:
    """One of Twilio's contents, as Plática keeps a template."""

    sid: str
    name: str
    language: str
    body: str
    variables: dict[str, str]
    approval: TemplateApproval
    rejection_reason: str | None


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """What a sync changed for one account; `total` is how many templates it has afterwards
    (those added by hand included)."""

    added: int
    updated: int
    removed: int
    total: int


def body_of(types: Mapping[str, object] | None) -> str:
    """The content's text: twilio/text's body, else the first type that has a body (or, for a
    card without one, a title); "" when none has."""
    kinds = dict(types or {})
    ordered = [kinds.pop("twilio/text")] if "twilio/text" in kinds else []
    ordered.extend(kinds.values())
    for key in TEXT_KEYS:
        for kind in ordered:
            if isinstance(kind, Mapping) and isinstance(kind.get(key), str):
                return str(kind[key])
    return ""


def approval_of(requests: Mapping[str, object] | None) -> tuple[TemplateApproval, str | None]:
    """The WhatsApp approval and its rejection reason from a content's `approval_requests`.

    The API's spellings other than "approved" are undocumented, so the status is compared
    case-insensitively; a value Plática does not know is `unknown` (never sendable). No request at
    all is `unsubmitted`. The WhatsApp request may also come nested under "whatsapp", as the
    ApprovalRequests resource has it.
    """
    if not requests:
        return TemplateApproval.unsubmitted, None
    nested = requests.get("whatsapp")
    request: Mapping[str, object] = nested if isinstance(nested, Mapping) else requests
    if not request:
        return TemplateApproval.unsubmitted, None
    status = request.get("status")
    approval = TemplateApproval.unknown
    if isinstance(status, str):
        try:
            approval = TemplateApproval(status.strip().lower())
        except ValueError:
            approval = TemplateApproval.unknown
    reason = request.get("rejection_reason")
    return approval, (reason.strip() or None) if isinstance(reason, str) else None


def parse_content(item: ContentItem) -> RemoteTemplate:
    """A content (ContentAndApprovals) as a template: sid, name, language, text, variables'
    samples, WhatsApp approval."""
    sid = item.sid or ""
    approval, reason = approval_of(item.approval_requests)
    return RemoteTemplate(
        sid=sid,
        name=item.friendly_name or sid,
        language=item.language or "",
        body=body_of(item.types),
        variables={str(name): str(sample) for name, sample in (item.variables or {}).items()},
        approval=approval,
        rejection_reason=reason,
    )


async def fetch_templates(settings: Settings) -> list[RemoteTemplate]:
    """Every content of the Twilio account with its WhatsApp approval, every page read.

    TwilioNotConfigured without credentials, TwilioCredentialsRefused on 401/403,
    TwilioUnavailable when Twilio cannot be reached in time or fails.
    """
    if not settings.twilio_configured or settings.TWILIO_AUTH_TOKEN is None:
        raise TwilioNotConfigured()
    http = AsyncTwilioHttpClient()
    client = Client(
        settings.TWILIO_ACCOUNT_SID,
        settings.TWILIO_AUTH_TOKEN.get_secret_value(),
        http_client=http,
    )
    # The Content API is its own domain (content.twilio.com), with its own base URL.
    client.content.base_url = settings.TWILIO_CONTENT_BASE_URL
    try:
        async with asyncio.timeout(CONTENT_TIMEOUT_SECONDS):
            contents = await client.content.v1.content_and_approvals.list_async(page_size=PAGE_SIZE)
    except (aiohttp.ClientError, TimeoutError, TwilioException) as error:
        status = answered_status(error)
        if status in (401, 403):
            log.warning("templates.twilio_refused", status=status)
            raise TwilioCredentialsRefused(status) from error
        if status is not None:
            log.warning("templates.twilio_failed", status=status)
            raise TwilioUnavailable(
                f"Twilio's Content API answered {status}; try again later"
            ) from error
        log.warning("templates.twilio_unreachable", error=type(error).__name__)
        raise TwilioUnavailable(
            f"Twilio's Content API could not be reached ({type(error).__name__}); try again later"
        ) from error
    finally:
        await http.close()
    templates = [parse_content(item) for item in contents]
    return [template for template in templates if template.sid]


def answered_status(error: BaseException) -> int | None:
    """The HTTP status Twilio answered with, if it answered. A list's pages are not read through
    TwilioRestException: the SDK's Page raises a bare TwilioException("Unable to fetch page",
    response) for any status but 200."""
    if isinstance(error, TwilioRestException):
        return int(error.status)
    if isinstance(error, TwilioException) and len(error.args) > 1:
        status = getattr(error.args[1], "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _differs(row: Template, remote: RemoteTemplate) -> bool:
    return (
        row.name != remote.name
        or row.language != remote.language
        or row.body != remote.body
        or dict(row.variables or {}) != remote.variables
        or row.approval != remote.approval
        or row.rejection_reason != remote.rejection_reason
        or row.source != SOURCE_TWILIO
    )


async def apply_templates(
    session: AsyncSession, account_id: uuid.UUID, remote: Iterable[RemoteTemplate]
) -> SyncSummary:
    """Make the account's synced templates those of `remote` (flushed, not committed).

    A template added by hand that Twilio now lists becomes a synced one (Twilio's copy wins);
    those Twilio does not list are left alone.
    """
    listed = {template.sid: template for template in remote}
    # Two syncs of one account at once take turns (else both would insert the same new sid).
    await session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    rows = {
        row.sid: row
        for row in await session.scalars(select(Template).where(Template.account_id == account_id))
    }
    now = utcnow()
    added = updated = removed = 0
    for sid, template in listed.items():
        row = rows.get(sid)
        if row is None:
            session.add(
                Template(
                    account_id=account_id,
                    sid=sid,
                    name=template.name,
                    language=template.language,
                    body=template.body,
                    variables=template.variables,
                    approval=template.approval,
                    rejection_reason=template.rejection_reason,
                    source=SOURCE_TWILIO,
                    synced_at=now,
                )
            )
            added += 1
            continue
        if _differs(row, template):
            row.name = template.name
            row.language = template.language
            row.body = template.body
            row.variables = template.variables
            row.approval = template.approval
            row.rejection_reason = template.rejection_reason
            row.source = SOURCE_TWILIO
            updated += 1
        row.synced_at = now
    for sid, row in rows.items():
        if row.source == SOURCE_TWILIO and sid not in listed:
            await session.delete(row)
            removed += 1
    await session.flush()
    total = len(listed) + sum(
        1 for sid, row in rows.items() if row.source != SOURCE_TWILIO and sid not in listed
    )
    log.info(
        "templates.synced",
        account_id=str(account_id),
        added=added,
        updated=updated,
        removed=removed,
        total=total,
    )
    return SyncSummary(added=added, updated=updated, removed=removed, total=total)
