"""A conversation's page: its messages as a chat with their delivery states and media (shown by
media.py), and the operator's controls (close, hand off, resume, retry, reply by hand). On
WhatsApp it counts down the contact's 24-hour window; once it is closed, the reply box becomes
a template picker (an approved template is all that can reach the contact then)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.conversations import operators
from platica.dashboard import display, web
from platica.dashboard import media as dashboard_media
from platica.dashboard.i18n import N_, _
from platica.dashboard.inbox import conversation_row
from platica.dashboard.web import (
    OperatorVisit,
    PostedForm,
    Visit,
    conversation_key,
    embed,
    live,
    not_found,
    redirect,
    render,
)
from platica.errors import NotFound, PlaticaError, Unprocessable
from platica.http import first
from platica.jobs.runner import commit_and_wake
from platica.logging import get_logger
from platica.models import (
    Author,
    Channel,
    ConversationStatus,
    Direction,
    Message,
    ReplyState,
    Template,
    TemplateApproval,
    utcnow,
)
from platica.outreach import content
from platica.outreach.proactive import Proactive, send_proactive
from platica.outreach.templates import sendable, variables_of
from platica.schemas import ManualReply

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

THREAD_LIMIT = 500
NOTICES = {
    "closed": N_("Conversation closed."),
    "handed_off": N_("You have the conversation: the AI stays quiet until you resume it."),
    "resumed": N_("The AI answers this conversation again."),
    "replied": N_("Reply queued for sending."),
    "retried": N_("Retried: the conversation's replies run again."),
    "template_sent": N_("Template queued for sending."),
    "templates_synced": N_("Templates synced from Twilio."),
}
AUTHORS = {
    Author.contact: N_("Contact"),
    Author.ai: N_("AI"),
    Author.operator: N_("Operator"),
    Author.system: N_("Plática"),
}


def _message(message: Message, media: list[dict[str, Any]]) -> dict[str, Any]:
    inbound = message.direction == Direction.inbound
    waiting = inbound and message.reply_state == ReplyState.pending
    return {
        "id": message.id,
        "inbound": inbound,
        "author": _(AUTHORS[message.author]) if message.author in AUTHORS else str(message.author),
        "author_kind": str(message.author),
        "body": message.body,
        "media": media,
        "status": str(message.status),
        "status_text": display.delivery_state(message.status, simulated=message.simulated),
        "error_code": message.error_code,
        "error_text": display.error_text(message.error_code),
        "error_message": message.error_message,
        "failed": message.status in ("failed", "undelivered"),
        "waiting": waiting,
        "skipped": inbound and message.reply_state == ReplyState.skipped,
        "note": display.note(message.note),
        "model": message.model,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "latency": display.milliseconds(message.latency_ms)
        if message.latency_ms is not None
        else None,
        "segments": message.segments,
        "encoding": message.encoding,
        "created_at": message.created_at,
    }


async def sendable_templates(
    session: AsyncSession, account_id: uuid.UUID, channel: Channel
) -> list[dict[str, Any]]:
    """The account's templates that may be sent on the channel, with their variables."""
    rows = await session.scalars(
        select(Template)
        .where(Template.account_id == account_id)
        .order_by(Template.name, Template.language, Template.id)
    )
    return [
        {
            "id": row.id,
            "sid": row.sid,
            "name": row.name,
            "language": row.language,
            "body": row.body,
            "variables": variables_of(row),
            "samples": row.variables or {},
            "approved": row.approval == TemplateApproval.approved,
        }
        for row in rows
        if sendable(row, channel)
    ]


def reply_window(channel: Channel, closes_at: Any) -> dict[str, Any] | None:
    """The WhatsApp window as the page words it (None on SMS, which has none)."""
    if channel != Channel.whatsapp:
        return None
    now = utcnow()
    if closes_at is None:
        return {"state": "never", "closes_at": None}
    if closes_at > now:
        return {"state": "open", "closes_at": closes_at, "left": display.time_left(closes_at, now)}
    return {"state": "closed", "closes_at": closes_at, "ago": display.time_ago(closes_at, now)}


async def load_thread(visit: Visit, channel: str, conversation_id: str) -> dict[str, Any] | None:
    """The conversation and its messages, ready for the page (None: no such conversation
    for this operator)."""
    key = conversation_key(channel, conversation_id)
    if key is None:
        return None
    async with visit.db() as session:
        try:
            conversation = await operators.get_conversation(
                session, key[0], visit.me.account_id, key[1]
            )
        except NotFound:
            return None
        view = await operators.view(session, conversation)
        messages = await operators.history(session, conversation, THREAD_LIMIT)
        window = reply_window(key[0], view.window_closes_at)
        templates = (
            await sendable_templates(session, conversation.account_id, key[0])
            if window is not None and window["state"] != "open"
            else []
        )
    state = display.conversation_state(view)
    base_url = f"{visit.root}/conversations/{key[0].value}/{key[1]}"
    fetchable = dashboard_media.fetchable(visit.state)
    return {
        "conversation": conversation,
        "row": conversation_row(visit, view),
        "state": state,
        "handed_off": display.handed_off(view),
        "opted_out": view.opted_out,
        "flagged_at": view.flagged_at,
        "flag_reason": view.flag_reason,
        "closed": conversation.status == ConversationStatus.closed,
        "messages": [
            _message(m, dashboard_media.media_items(m, base_url, fetchable)) for m in messages
        ],
        "base_url": base_url,
        "awaiting": view.awaiting_reply,
        "window": window,
        "templates": templates,
    }


@router.get("/conversations/{channel}/{conversation_id}")
async def conversation_page(visit: OperatorVisit, channel: str, conversation_id: str) -> Response:
    """The messages as a chat, with their delivery states, and the operator's controls."""
    thread = await load_thread(visit, channel, conversation_id)
    if thread is None:
        return not_found(visit, "such conversation")
    return await _conversation_response(visit, thread)


async def _conversation_response(
    visit: Visit,
    thread: dict[str, Any],
    *,
    status_code: int = 200,
    error: str | None = None,
    draft: str = "",
    picked: dict[str, Any] | None = None,
) -> Response:
    options = {
        "live_id": "thread",
        "every": web.POLL_SECONDS,
        "poll_url": thread["base_url"] + "?fragment=thread",
    }
    if visit.request.query_params.get("fragment") == "thread":
        return live(visit, "_thread.html", **options, **thread)
    notice_key = visit.request.query_params.get("notice", "")
    notice = _(NOTICES[notice_key]) if notice_key in NOTICES else None
    return render(
        visit,
        "conversation.html",
        "inbox",
        status_code=status_code,
        notice=notice,
        error=error,
        draft=draft,
        picked=picked or {},
        live=embed(visit, "_thread.html", **options, **thread),
        **thread,
    )


async def _shown_again(
    visit: Visit,
    channel: str,
    conversation_id: str,
    *,
    status_code: int,
    error: str | None = None,
    draft: str = "",
    picked: dict[str, Any] | None = None,
) -> Response:
    """The conversation page again, saying what went wrong and keeping what was typed."""
    thread = await load_thread(visit, channel, conversation_id)
    if thread is None:
        return not_found(visit, "such conversation")
    return await _conversation_response(
        visit, thread, status_code=status_code, error=error, draft=draft, picked=picked
    )


async def _act(
    visit: Visit, channel: str, conversation_id: str, action: str, body: str | None = None
) -> Response:
    key = conversation_key(channel, conversation_id)
    if key is None:
        return not_found(visit, "such conversation")
    error: PlaticaError | None = None
    async with visit.db() as session:
        try:
            conversation = await operators.get_conversation(
                session, key[0], visit.me.account_id, key[1]
            )
        except NotFound:
            return not_found(visit, "such conversation")
        try:
            if action == "closed":
                await operators.close(session, conversation)
            elif action == "handed_off":
                await operators.hand_off_and_notify(session, conversation)
            elif action == "resumed":
                await operators.resume(session, conversation)
            elif action == "replied":
                await operators.manual_reply(session, conversation, body or "")
            elif action == "retried":
                await operators.retry(session, conversation)
            # A reply or a handoff notice to send, or the AI to answer what waited for it:
            # queued once committed.
            wakes = action in ("replied", "resumed", "retried", "handed_off")
            await commit_and_wake(session, visit.state.runner, key[1] if wakes else None)
        except PlaticaError as problem:
            await session.rollback()
            error = problem
    if error is not None:
        return await _shown_again(
            visit,
            channel,
            conversation_id,
            status_code=error.status_code,
            error=error.message,
            draft=body or "",
        )
    log.info("dashboard.action", action=action, conversation_id=key[1])
    return redirect(visit, f"/conversations/{key[0].value}/{key[1]}?notice={action}")


@router.post("/conversations/{channel}/{conversation_id}/close")
async def close_conversation(
    visit: OperatorVisit, _form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Close the conversation; the contact's next message opens a new one."""
    return await _act(visit, channel, conversation_id, "closed")


@router.post("/conversations/{channel}/{conversation_id}/handoff")
async def hand_off(
    visit: OperatorVisit, _form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Pause the AI: the operator has the conversation."""
    return await _act(visit, channel, conversation_id, "handed_off")


@router.post("/conversations/{channel}/{conversation_id}/resume")
async def resume(
    visit: OperatorVisit, _form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Give the conversation back to the AI."""
    return await _act(visit, channel, conversation_id, "resumed")


@router.post("/conversations/{channel}/{conversation_id}/retry")
async def retry(
    visit: OperatorVisit, _form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Unpark a conversation its reply task kept crashing on, and run its work again."""
    return await _act(visit, channel, conversation_id, "retried")


@router.post("/conversations/{channel}/{conversation_id}/reply")
async def reply(
    visit: OperatorVisit, form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Reply by hand (this also pauses the AI, as a handoff)."""
    text = (first(form, "body") or "").replace("\r\n", "\n")
    try:
        body = ManualReply.model_validate({"body": text}).body
    except ValidationError as invalid:
        message = display.field_errors(invalid).get("body", _("is not valid"))
        return await _shown_again(
            visit,
            channel,
            conversation_id,
            status_code=422,
            error=_("The reply %(problem)s.", problem=message),
            draft=text,
        )
    return await _act(visit, channel, conversation_id, "replied", body)


@router.post("/conversations/{channel}/{conversation_id}/templates/sync")
async def sync_templates(
    visit: OperatorVisit, _form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Read the account's templates from Twilio's Content API, then show the conversation again
    with them to pick from."""
    key = conversation_key(channel, conversation_id)
    if key is None:
        return not_found(visit, "such conversation")
    error: PlaticaError | None = None
    async with visit.db() as session:
        try:
            conversation = await operators.get_conversation(
                session, key[0], visit.me.account_id, key[1]
            )
        except NotFound:
            return not_found(visit, "such conversation")
        account_id = conversation.account_id
    try:
        # Twilio first: no transaction waits while it answers.
        remote = await content.fetch_templates(visit.state.settings)
        async with visit.db() as session:
            summary = await content.apply_templates(session, account_id, remote)
            await session.commit()
    except PlaticaError as problem:
        error = problem
    if error is not None:
        return await _shown_again(
            visit, channel, conversation_id, status_code=error.status_code, error=error.message
        )
    log.info("dashboard.templates_synced", total=summary.total)
    where = f"/conversations/{key[0].value}/{key[1]}"
    return redirect(visit, f"{where}?notice=templates_synced")


@router.post("/conversations/{channel}/{conversation_id}/template")
async def send_template(
    visit: OperatorVisit, form: PostedForm, channel: str, conversation_id: str
) -> Response:
    """Send an approved template to the contact (all WhatsApp allows outside its window)."""
    key = conversation_key(channel, conversation_id)
    if key is None:
        return not_found(visit, "such conversation")
    sid = first(form, "template") or ""
    # The posted values as typed, to show them again if the template cannot be sent.
    typed = {name: values[0] for name, values in form.items() if name.startswith("var-")}
    error: PlaticaError | None = None
    async with visit.db() as session:
        try:
            conversation = await operators.get_conversation(
                session, key[0], visit.me.account_id, key[1]
            )
        except NotFound:
            return not_found(visit, "such conversation")
        template = await session.scalar(
            select(Template).where(
                Template.account_id == conversation.account_id, Template.sid == sid
            )
        )
        variables = (
            {name: typed.get(f"var-{template.id}-{name}", "") for name in variables_of(template)}
            if template is not None
            else {}
        )
        try:
            if not sid:
                raise Unprocessable("choose a template first")
            sent = await send_proactive(
                session,
                conversation.account_id,
                key[0],
                Proactive(to=conversation.contact_address, template=sid, variables=variables),
            )
            await commit_and_wake(session, visit.state.runner, sent.message.conversation_id)
        except PlaticaError as problem:
            await session.rollback()
            error = problem
    if error is not None:
        picked = {"sid": sid, "values": typed, "error": error.message}
        return await _shown_again(
            visit, channel, conversation_id, status_code=error.status_code, picked=picked
        )
    log.info("dashboard.template_sent", conversation_id=key[1], template=sid)
    where = f"/conversations/{key[0].value}/{sent.message.conversation_id}"
    return redirect(visit, f"{where}?notice=template_sent")
