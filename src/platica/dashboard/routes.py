"""The operators' web dashboard at /: log in, inbox, conversation, stats, settings, phone simulator.

Pages are rendered on the server (Jinja2); htmx polls the inbox and the open thread so they update
as messages arrive, and the server answers 204 when nothing changed. Reads and writes go through
the service functions the REST API uses (conversations/operators.py and stats.py), in sessions
scoped to the operator's account, so the dashboard sees exactly what the API would. web.py holds
the plumbing (sessions, CSRF, responses), session.py the cookie, display.py the words.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica import db
from platica.accounts import DEMO_NUMBERS, hash_api_key
from platica.api.auth import Principal, authenticate, client_address
from platica.channels.forms import inbound_form
from platica.channels.inbound import Recorded, WebhookEntry
from platica.channels.parsing import first, parse_inbound
from platica.channels.webhook import receive_inbound
from platica.config import E164
from platica.conversations import operators, stats
from platica.conversations.operators import ConversationView
from platica.dashboard import display
from platica.dashboard.alerts import backlog
from platica.dashboard.session import admin_fingerprint, close_session, open_session
from platica.dashboard.web import (
    STATIC,
    AnyVisit,
    CsrfRejected,
    LoginRequired,
    OperatorVisit,
    PostedForm,
    Visit,
    csrf_rejected,
    embed,
    live,
    login_required,
    not_found,
    redirect,
    render,
    safe_next,
    uuid_or_none,
)
from platica.errors import NotFound, PlaticaError
from platica.logging import get_logger
from platica.models import (
    Author,
    Channel,
    ChannelConfig,
    ConversationStatus,
    Direction,
    Message,
    ReplyState,
    utcnow,
)
from platica.schemas import ChannelConfigUpdate, ManualReply

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

INBOX_PAGE = 50
INBOX_MAX = 500
# Filters the service cannot apply in SQL (handed off, opted out) look at this many at most.
FILTER_SCAN = 2000
THREAD_LIMIT = 500
# How often open pages ask for changes (the server answers 204 when there are none).
POLL_SECONDS = 3.0
SIMULATOR_POLL_SECONDS = 1.0
ENGAGEMENT_DAYS = (7, 30, 90)
SIMULATOR_FROM = "+15550100001"
CONFIG_FIELDS = (
    "system_prompt",
    "openai_model",
    "max_tokens",
    "temperature",
    "context_messages",
    "debounce_seconds",
    "sms_max_chars",
    "fallback_message",
    "help_message",
    "handoff_timeout_minutes",
    "daily_token_budget",
    "busy_message",
)
NOTICES = {
    "closed": "Conversation closed.",
    "handed_off": "You have the conversation: the AI stays quiet until you resume it.",
    "resumed": "The AI answers this conversation again.",
    "replied": "Reply queued for sending.",
    "retried": "Retried: the conversation's replies run again.",
}
AUTHORS = {
    Author.contact: "Contact",
    Author.ai: "AI",
    Author.operator: "Operator",
    Author.system: "Plática",
}


def install(app: FastAPI) -> None:
    """Serve the dashboard from `app`: its pages at /, its files at /static."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(CsrfRejected, csrf_rejected)


# -- logging in and out ----------------------------------------------------------------------------


@router.get("/login")
async def login_page(visit: AnyVisit) -> Response:
    """The login form."""
    next_path = safe_next(visit.request.query_params.get("next"))
    if visit.operator is not None:
        return redirect(visit, next_path)
    return render(visit, "login.html", "login", next=next_path, error=None)


@router.post("/login")
async def log_in(visit: AnyVisit, form: PostedForm) -> Response:
    """Log in with an account's API key or the admin token."""
    token = (first(form, "token") or "").strip()
    next_path = safe_next(first(form, "next"))
    address = client_address(visit.request)
    retry_after = visit.state.throttle.login_retry_after(address)
    if retry_after is not None:
        # Checked before the token, right or wrong: otherwise guessing would simply go on.
        log.warning("dashboard.login_throttled", retry_after=retry_after)
        error = f"Too many failed logins from your address. Try again in {retry_after} seconds."
        response = render(
            visit, "login.html", "login", status_code=429, next=next_path, error=error
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    principal: Principal | None = None
    error = "Enter an API key or the admin token."
    if token:
        async with visit.state.sessionmaker() as session:
            try:
                principal = await authenticate(visit.state, session, token)
            except HTTPException:
                principal = None
                visit.state.throttle.count_failed_login(address)
            await session.commit()  # the key's last use
        error = "That is not a valid API key or admin token."
    if principal is None or principal.kind == "supabase":
        if principal is not None:
            error = "Log in with an account's API key or the admin token."
        log.info("dashboard.login_failed")
        return render(visit, "login.html", "login", status_code=401, next=next_path, error=error)
    if principal.is_admin:
        credential = admin_fingerprint(visit.state.settings) or ""
    else:
        credential = hash_api_key(token)
    async with db.session(visit.state.sessionmaker) as session:
        sid = await open_session(session, principal.kind, principal.account_id)
    account = str(principal.account_id) if principal.account_id else None
    visit.cookie.log_in(principal.kind, credential, account, sid)
    log.info("dashboard.login", kind=principal.kind, account_id=account)
    return redirect(visit, next_path)


@router.post("/logout")
async def log_out(visit: AnyVisit, _form: PostedForm) -> Response:
    """End the session, on the server too: a copy of its cookie stops working."""
    if visit.cookie.sid:
        async with db.session(visit.state.sessionmaker) as session:
            await close_session(session, visit.cookie.sid)
    visit.cookie.log_out()
    return redirect(visit, "/login")


@router.post("/account")
async def switch_account(visit: OperatorVisit, form: PostedForm) -> Response:
    """Admin only: choose the account the pages show (empty: every account)."""
    operator = visit.me
    if not operator.is_admin:
        return not_found(visit, "account switcher")
    chosen = uuid_or_none(first(form, "account_id"))
    if chosen is not None and chosen not in dict(operator.accounts):
        return not_found(visit, "such account")
    visit.cookie.viewing = str(chosen) if chosen else None
    visit.cookie.changed = True
    return redirect(visit, safe_next(first(form, "next")))


# -- inbox -----------------------------------------------------------------------------------------


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return max(low, min(high, number))


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


def _row(visit: Visit, view: ConversationView) -> dict[str, Any]:
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
    limit = _int(params.get("limit"), INBOX_PAGE, 1, INBOX_MAX)
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
        "rows": [_row(visit, v) for v in views[:limit]],
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
    options = {"live_id": "inbox-list", "every": POLL_SECONDS, "poll_url": data.pop("poll_url")}
    if visit.request.query_params.get("fragment") == "list":
        return live(visit, "_inbox_list.html", **options, **data)
    return render(
        visit,
        "inbox.html",
        "inbox",
        live=embed(visit, "_inbox_list.html", **options, **data),
        **data,
    )


# -- a conversation --------------------------------------------------------------------------------


def _conversation_key(channel: str, conversation_id: str) -> tuple[Channel, int] | None:
    if channel not in display.CHANNEL_NAMES or not conversation_id.isdigit():
        return None
    number = int(conversation_id)
    return (Channel(channel), number) if 0 < number < 2**63 else None


def _message(message: Message) -> dict[str, Any]:
    inbound = message.direction == Direction.inbound
    media = [
        {
            "url": item.get("url", ""),
            "content_type": item.get("content_type", ""),
            "image": str(item.get("content_type", "")).startswith("image/"),
        }
        for item in message.media or []
        if str(item.get("url", "")).startswith(("https://", "http://"))
    ]
    waiting = inbound and message.reply_state == ReplyState.pending
    return {
        "id": message.id,
        "inbound": inbound,
        "author": AUTHORS.get(message.author, str(message.author)),
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
        "note": message.note,
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


async def _thread(visit: Visit, channel: str, conversation_id: str) -> dict[str, Any] | None:
    key = _conversation_key(channel, conversation_id)
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
    state = display.conversation_state(view)
    return {
        "conversation": conversation,
        "row": _row(visit, view),
        "state": state,
        "handed_off": display.handed_off(view),
        "opted_out": view.opted_out,
        "flagged_at": view.flagged_at,
        "flag_reason": view.flag_reason,
        "closed": conversation.status == ConversationStatus.closed,
        "messages": [_message(m) for m in messages],
        "base_url": f"{visit.root}/conversations/{key[0].value}/{key[1]}",
        "awaiting": view.awaiting_reply,
    }


@router.get("/conversations/{channel}/{conversation_id}")
async def conversation_page(visit: OperatorVisit, channel: str, conversation_id: str) -> Response:
    """The messages as a chat, with their delivery states, and the operator's controls."""
    thread = await _thread(visit, channel, conversation_id)
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
) -> Response:
    options = {
        "live_id": "thread",
        "every": POLL_SECONDS,
        "poll_url": thread["base_url"] + "?fragment=thread",
    }
    if visit.request.query_params.get("fragment") == "thread":
        return live(visit, "_thread.html", **options, **thread)
    notice = NOTICES.get(visit.request.query_params.get("notice", ""))
    return render(
        visit,
        "conversation.html",
        "inbox",
        status_code=status_code,
        notice=notice,
        error=error,
        draft=draft,
        live=embed(visit, "_thread.html", **options, **thread),
        **thread,
    )


async def _act(
    visit: Visit, channel: str, conversation_id: str, action: str, body: str | None = None
) -> Response:
    key = _conversation_key(channel, conversation_id)
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
                await operators.hand_off(session, conversation)
            elif action == "resumed":
                await operators.resume(session, conversation)
            elif action == "replied":
                await operators.manual_reply(session, conversation, body or "")
            elif action == "retried":
                await operators.retry(session, conversation)
            await session.commit()
        except PlaticaError as problem:
            await session.rollback()
            error = problem
    if error is not None:
        thread = await _thread(visit, channel, conversation_id)
        if thread is None:
            return not_found(visit, "such conversation")
        return await _conversation_response(
            visit, thread, status_code=error.status_code, error=error.message, draft=body or ""
        )
    if action in ("replied", "resumed", "retried") and visit.state.runner is not None:
        # After the commit: a reply to send, or the AI to answer what waited for it.
        await visit.state.runner.defer(key[1])
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
        thread = await _thread(visit, channel, conversation_id)
        if thread is None:
            return not_found(visit, "such conversation")
        message = _field_errors(invalid).get("body", "is not valid")
        return await _conversation_response(
            visit, thread, status_code=422, error=f"The reply {message}.", draft=text
        )
    return await _act(visit, channel, conversation_id, "replied", body)


# -- stats -----------------------------------------------------------------------------------------


@router.get("/stats")
async def stats_page(visit: OperatorVisit) -> Response:
    """The figures of /api/{channel}/stats and charts of /api/{channel}/engagement."""
    days = _int(visit.request.query_params.get("days"), 30, 1, 366)
    if days not in ENGAGEMENT_DAYS:
        days = 30
    channels = []
    async with visit.db() as session:
        for channel in Channel:
            figures = await stats.channel_stats(session, channel, visit.me.account_id)
            per_day = await stats.engagement(session, channel, visit.me.account_id, days)
            channels.append(
                {
                    "channel": channel.value,
                    "name": display.CHANNEL_NAMES[channel.value],
                    "stats": figures,
                    "days": per_day,
                    "chart": {
                        "labels": [day["date"].isoformat() for day in per_day],
                        "incoming": [day["incoming_messages"] for day in per_day],
                        "outgoing": [day["outgoing_messages"] for day in per_day],
                        "replies": [day["replies"] for day in per_day],
                        "conversations": [day["conversations"] for day in per_day],
                        "response_seconds": [
                            None
                            if day["avg_response_time_ms"] is None
                            else round(day["avg_response_time_ms"] / 1000, 2)
                            for day in per_day
                        ],
                    },
                }
            )
    return render(
        visit, "stats.html", "stats", channels=channels, days=days, choices=ENGAGEMENT_DAYS
    )


# -- settings --------------------------------------------------------------------------------------


def _field_errors(invalid: ValidationError) -> dict[str, str]:
    """Pydantic's errors by field name, phrased to follow the field's label."""
    errors: dict[str, str] = {}
    for problem in invalid.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "form"
        errors.setdefault(
            name, _in_words(problem["type"], problem.get("ctx") or {}, problem["msg"])
        )
    return errors


def _in_words(kind: str, context: dict[str, Any], message: str) -> str:
    phrases = {
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "string_too_short": "must not be empty",
        "string_too_long": "must be at most {max_length} characters",
        "string_pattern_mismatch": "may contain only letters, digits and . : / @ + - _",
    }
    if kind in phrases:
        return phrases[kind].format(**{k: _number(v) for k, v in context.items()})
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _number(value: Any) -> Any:
    """2.0 -> "2", 0.25 -> "0.25": floats as people write them."""
    return f"{value:g}" if isinstance(value, float) else value


def _config_values(config: ChannelConfig) -> dict[str, Any]:
    values = {name: _number(getattr(config, name)) for name in CONFIG_FIELDS}
    values["openai_model"] = config.openai_model or ""
    values["daily_token_budget"] = config.daily_token_budget or ""
    values["ai_enabled"] = config.ai_enabled
    return values


async def _configs(visit: Visit) -> dict[str, ChannelConfig | None]:
    account_id = visit.me.account_id
    configs: dict[str, ChannelConfig | None] = {}
    async with visit.db() as session:
        for channel in Channel:
            try:
                configs[channel.value] = (
                    await operators.get_config(session, channel, account_id)
                    if account_id is not None
                    else None
                )
            except NotFound:
                configs[channel.value] = None
    return configs


def _settings_forms(
    configs: Mapping[str, ChannelConfig | None],
    posted: str | None = None,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    forms = []
    for channel, config in configs.items():
        form: dict[str, Any] = {
            "channel": channel,
            "name": display.CHANNEL_NAMES[channel],
            "config": config,
            "errors": {},
        }
        if config is not None:
            form["current"] = _config_values(config)
            form["phone_number"] = config.phone_number
            if channel == posted and values is not None:
                form["current"] = values
                form["errors"] = errors or {}
        forms.append(form)
    return forms


@router.get("/settings")
async def settings_page(visit: OperatorVisit) -> Response:
    """Each channel's settings, for editing."""
    configs = await _configs(visit)
    saved = visit.request.query_params.get("saved")
    return render(
        visit,
        "settings.html",
        "settings",
        forms=_settings_forms(configs),
        saved=display.CHANNEL_NAMES.get(saved or ""),
        default_model=visit.state.settings.OPENAI_MODEL,
        today=utcnow().date(),
    )


@router.post("/settings/{channel}")
async def save_settings(visit: OperatorVisit, form: PostedForm, channel: str) -> Response:
    """Validate and save one channel's settings (the rules of PUT /api/{channel}/config)."""
    if channel not in display.CHANNEL_NAMES or visit.me.account_id is None:
        return not_found(visit, "such channel")
    values: dict[str, Any] = {}
    for name in CONFIG_FIELDS:
        value = (first(form, name) or "").replace("\r\n", "\n")
        values[name] = value
    values["ai_enabled"] = first(form, "ai_enabled") == "on"
    update_values: dict[str, Any] = {
        **values,
        # Empty: the server's default model; no budget.
        "openai_model": values["openai_model"] or None,
        "daily_token_budget": values["daily_token_budget"].strip() or None,
    }
    errors: dict[str, str] = {}
    try:
        update = ChannelConfigUpdate.model_validate(update_values)
    except ValidationError as invalid:
        errors = _field_errors(invalid)
    if not errors:
        async with visit.db() as session:
            try:
                config = await operators.get_config(session, Channel(channel), visit.me.account_id)
            except NotFound:
                return not_found(visit, "such channel")
            for name in update.model_fields_set:
                setattr(config, name, getattr(update, name))
            await session.commit()
        log.info("dashboard.settings_saved", channel=channel)
        return redirect(visit, f"/settings?saved={channel}#{channel}")
    configs = await _configs(visit)
    return render(
        visit,
        "settings.html",
        "settings",
        status_code=422,
        forms=_settings_forms(configs, channel, values, errors),
        saved=None,
        default_model=visit.state.settings.OPENAI_MODEL,
        today=utcnow().date(),
    )


# -- phone simulator -------------------------------------------------------------------------------


async def _record_simulated(visit: Visit, channel: Channel, form: dict[str, str]) -> Recorded:
    """Record the form as the webhook records a message, in-process (never over HTTP: no
    request is built from what this request's Host header says), marked simulated, so that
    what answers it goes through the dry-run sender and never reaches a real phone."""
    inbound = replace(parse_inbound({k: [v] for k, v in form.items()}, channel), simulated=True)
    entry = WebhookEntry(endpoint=channel.value, params={k: [v] for k, v in form.items()})
    return await receive_inbound(visit.state, inbound, entry)


async def _simulator_thread(visit: Visit, key: str | None) -> dict[str, Any] | None:
    if not key or "/" not in key:
        return None
    channel, _, ident = key.partition("/")
    return await _thread(visit, channel, ident)


@router.get("/simulator")
async def simulator_page(visit: OperatorVisit) -> Response:
    """Write as a test contact; the message goes through the real pipeline and its reply,
    never sent to a phone, appears."""
    params = visit.request.query_params
    thread = await _simulator_thread(visit, params.get("conversation"))
    if params.get("fragment") == "phone":
        if thread is None:
            return not_found(visit, "such conversation")
        return live(visit, "_phone.html", **_phone_options(visit, thread), **thread)
    channel = params.get("channel", "")
    values = {
        "channel": channel if channel in display.CHANNEL_NAMES else Channel.whatsapp.value,
        "sender": params.get("from") or SIMULATOR_FROM,
    }
    return await _simulator_response(visit, values, thread)


def _phone_options(visit: Visit, thread: dict[str, Any]) -> dict[str, Any]:
    query = httpx.QueryParams({"conversation": thread["row"]["key"], "fragment": "phone"})
    return {
        "live_id": "phone",
        "every": SIMULATOR_POLL_SECONDS,
        "poll_url": f"{visit.root}/simulator?{query}",
    }


async def _simulator_response(
    visit: Visit,
    values: dict[str, str],
    thread: dict[str, Any] | None,
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
) -> Response:
    configs = await _configs(visit)
    numbers = {channel: config.phone_number for channel, config in configs.items() if config}
    phone = None
    if thread is not None:
        phone = embed(visit, "_phone.html", **_phone_options(visit, thread), **thread)
    return render(
        visit,
        "simulator.html",
        "simulator",
        status_code=status_code,
        values=values,
        errors=errors or {},
        numbers=numbers,
        thread=thread,
        live=phone,
        dry_run=not visit.state.settings.twilio_configured,
        demo=DEMO_NUMBERS,
    )


@router.post("/simulator")
async def simulate(visit: OperatorVisit, form: PostedForm) -> Response:
    """Record a test message as the webhook would (in-process); its reply is never sent."""
    channel_name = first(form, "channel") or ""
    sender = (first(form, "from") or "").strip()
    body = (first(form, "body") or "").replace("\r\n", "\n").strip()
    values = {"channel": channel_name, "sender": sender, "body": body}
    errors: dict[str, str] = {}
    if channel_name not in display.CHANNEL_NAMES:
        errors["channel"] = "choose WhatsApp or SMS"
    if not E164.match(sender):
        errors["from"] = "must be an E.164 number like +15550100001"
    if not body:
        errors["body"] = "write a message first"
    elif len(body) > 1600:
        errors["body"] = "must be at most 1600 characters"
    configs = await _configs(visit)
    channel = Channel(channel_name) if channel_name in display.CHANNEL_NAMES else None
    config = configs.get(channel_name) if channel else None
    if channel is not None and config is None:
        errors["channel"] = (
            "choose an account first (in the header)"
            if visit.me.account_id is None
            else f"this account has no {display.CHANNEL_NAMES[channel_name]} number"
        )
    if errors or channel is None or config is None:
        return await _simulator_response(visit, values, None, status_code=422, errors=errors)
    twilio_form = inbound_form(
        channel,
        sender,
        config.phone_number,
        body,
        account_sid=visit.state.settings.TWILIO_ACCOUNT_SID,
    )
    try:
        recorded = await _record_simulated(visit, channel, twilio_form)
    except PlaticaError as error:
        # The form is ours, so only a number that changed hands meanwhile gets here.
        return await _simulator_response(
            visit, values, None, status_code=error.status_code, errors={"form": error.message}
        )
    if recorded.conversation_id is None:
        return await _simulator_response(
            visit, values, None, status_code=502, errors={"form": "the message was not stored"}
        )
    log.info("dashboard.simulated", channel=channel.value, account_id=str(recorded.account_id))
    query = httpx.QueryParams(
        {
            "conversation": f"{channel.value}/{recorded.conversation_id}",
            "channel": channel.value,
            "from": sender,
        }
    )
    return redirect(visit, f"/simulator?{query}")
