"""Twilio's webhooks: POST /webhook/whatsapp, /webhook/sms (messages) and /webhook/status (deliveries).

Each request is verified, recorded once, logged in webhook_logs, and acknowledged at once with an
empty TwiML response; replying happens elsewhere, in the background.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect
from twilio.request_validator import RequestValidator, get_signature_algorithm

from platica.channels.inbound import (
    Recorded,
    WebhookEntry,
    record_message,
    record_status,
    save_entry,
)
from platica.channels.parsing import InboundMessage, parse_inbound, parse_status
from platica.config import Settings
from platica.deps import AppState, app_state
from platica.errors import InvalidSignature, NotFound, PlaticaError
from platica.http import FormData, app_path, first, mount_prefix, parse_form, read_body
from platica.logging import get_logger, mask_phone
from platica.metrics import MEDIA_ITEMS, REPLIES, WEBHOOK_SECONDS, WEBHOOKS, WEBHOOKS_UNLOGGED
from platica.models import Channel

router = APIRouter(prefix="/webhook", tags=["webhooks"])
log = get_logger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'

TWIML_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Acknowledged: an empty TwiML response",
        "content": {"text/xml": {"example": EMPTY_TWIML}},
    },
    400: {"description": "A required field is missing or malformed"},
    403: {"description": "X-Twilio-Signature is missing or wrong"},
    413: {"description": "The body is over 64 KiB"},
    415: {"description": "Not an application/x-www-form-urlencoded post"},
}


def twiml_ack() -> Response:
    return Response(content=EMPTY_TWIML, media_type="text/xml")


def signed_url(request: Request, settings: Settings) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + the path inside the app (proxies change the
    rest; the settings require PUBLIC_BASE_URL whenever signatures are checked).

    PUBLIC_BASE_URL is where the app's root is reached, mount prefix included
    (https://example.com/platica when another app mounts Plática at /platica): the worker
    builds StatusCallback from it too, and never sees a request."""
    if not settings.PUBLIC_BASE_URL:
        return str(request.url)
    url = settings.PUBLIC_BASE_URL + app_path(request)
    return f"{url}?{request.url.query}" if request.url.query else url


def _mismatch_hint(request: Request, settings: Settings) -> str:
    """Why a signature may not match when mounted: PUBLIC_BASE_URL without the prefix."""
    prefix = mount_prefix(request)
    if prefix and settings.PUBLIC_BASE_URL and not settings.PUBLIC_BASE_URL.endswith(prefix):
        return f" (the app is mounted at {prefix}: PUBLIC_BASE_URL must end with it)"
    return ""


def signature_matches(
    token: str, url: str, form: FormData, signature: str, algorithm: str | None = None
) -> bool:
    """Twilio's signature check (the official RequestValidator) over every form field."""
    return bool(
        RequestValidator(token).validate(url, _MultiValues(form), signature, algorithm=algorithm)
    )


def verify_signature(request: Request, form: FormData, settings: Settings) -> bool | None:
    """Check X-Twilio-Signature over the URL and every form field; None when checks are off."""
    if settings.TWILIO_AUTH_TOKEN is None:
        return None
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        raise InvalidSignature("missing X-Twilio-Signature header")
    url = signed_url(request, settings)
    algorithm = get_signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
    if not signature_matches(
        settings.TWILIO_AUTH_TOKEN.get_secret_value(), url, form, signature, algorithm
    ):
        raise InvalidSignature(
            "X-Twilio-Signature does not match" + _mismatch_hint(request, settings),
            signed_url=url,
        )
    return True


class _MultiValues(dict[str, list[str]]):
    """Form data in the shape RequestValidator reads repeated fields from (`getall`)."""

    def getall(self, name: str) -> list[str]:
        return self[name]


# What a rejected request's log entry keeps (see rejected_params): anyone can send one.
KEPT_FIELDS = ("MessageSid", "AccountSid")
FIELD_NAMES_CHARS = 200
FIELD_NAME_CHARS = 40
REASON_CHARS = 300


def rejected_params(form: FormData | None, size: int | None) -> dict[str, list[str]]:
    """What explains a rejected request, in a few hundred bytes at most: its MessageSid and
    AccountSid, the names of its fields, and its size. Never the values (a forged post may
    carry 64 KiB of them, and an unsigned one proves nothing)."""
    kept: dict[str, list[str]] = {}
    if form is not None:
        for name in KEPT_FIELDS:
            value = first(form, name)
            if value is not None:
                kept[name] = [value[:64]]
        names: list[str] = []
        budget = FIELD_NAMES_CHARS
        for name in form:
            budget -= min(len(name), FIELD_NAME_CHARS)
            if budget < 0:
                kept["_more_fields"] = [str(len(form) - len(names))]
                break
            names.append(name[:FIELD_NAME_CHARS])
        kept["_fields"] = names
    if size is not None:
        kept["_bytes"] = [str(size)]
    return kept


def _declared_size(request: Request) -> int | None:
    declared = request.headers.get("content-length") or ""
    return int(declared) if declared.isdigit() else None


async def _handle(request: Request, state: AppState, endpoint: str) -> Response:
    started = time.perf_counter()
    entry = WebhookEntry(
        endpoint=endpoint,
        idempotency_token=(request.headers.get("i-twilio-idempotency-token") or "")[:128] or None,
    )
    form: FormData | None = None
    size: int | None = None
    try:
        body = await read_body(request)
        size = len(body)
        form = parse_form(body, request.headers.get("content-type"))
        entry.params = dict(form)
        entry.message_sid = (first(form, "MessageSid") or "")[:64] or None
        entry.signature_valid = verify_signature(request, form, state.settings)
        if endpoint == "status":
            await _record_status(state, form, entry)
        else:
            await _record_message(state, form, Channel(endpoint), entry)
    except PlaticaError as error:
        WEBHOOKS.labels(endpoint, "rejected").inc()
        if not state.throttle.log_rejected_webhook():
            # A flood (of forged posts, most likely): counted, neither stored nor logged.
            WEBHOOKS_UNLOGGED.labels(endpoint).inc()
            raise
        entry.status_code = error.status_code
        entry.outcome = "rejected"
        reason = error.message
        signed = None
        if isinstance(error, InvalidSignature):
            entry.signature_valid = False
            signed = error.signed_url and mask_phone(error.signed_url)[:REASON_CHARS]
            if signed:
                # Is PUBLIC_BASE_URL the URL Twilio calls? The operator sees it, the caller not.
                reason += f" (checked over {signed}: PUBLIC_BASE_URL + path)"
        entry.reason = mask_phone(reason)[:REASON_CHARS]
        entry.params = rejected_params(form, size if size is not None else _declared_size(request))
        await save_entry(state, entry)
        log.warning(
            "webhook.rejected",
            endpoint=endpoint,
            status=error.status_code,
            reason=entry.reason,
            message_sid=entry.message_sid,
            signed_url=signed,
        )
        raise
    except ClientDisconnect:
        # The caller gave up before its body arrived (Twilio waits 15 s): nothing to store.
        WEBHOOKS.labels(endpoint, "disconnected").inc()
        log.warning("webhook.client_disconnected", endpoint=endpoint)
        return Response(status_code=499)
    WEBHOOKS.labels(endpoint, entry.outcome).inc()
    WEBHOOK_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
    return twiml_ack()


async def _record_message(
    state: AppState, form: FormData, channel: Channel, entry: WebhookEntry
) -> None:
    await receive_inbound(state, parse_inbound(form, channel), entry)


async def receive_inbound(
    state: AppState, inbound: InboundMessage, entry: WebhookEntry
) -> Recorded:
    """Record an inbound message once (with its webhook log entry) and wake the worker for its
    reply: what the webhook does with a message, also done in-process by the dashboard's
    simulator. NotFound when no account owns its `To` number."""
    channel = inbound.channel
    recorded = await record_message(state, inbound, entry)
    if recorded is None:
        raise NotFound(
            f"no account owns {mask_phone(inbound.recipient)} on {channel.value}; "
            "add it with `platica accounts create` or TWILIO_"
            + ("WHATSAPP_NUMBER" if channel is Channel.whatsapp else "PHONE_NUMBER")
        )
    if recorded.message_id is not None and recorded.flooded:
        REPLIES.labels(channel.value, "flood").inc()
        # No sender here: the account and the message are enough to find it.
        log.warning(
            "webhook.flood",
            channel=channel.value,
            account_id=str(recorded.account_id),
            message_sid=inbound.sid,
            message_id=recorded.message_id,
        )
        return recorded
    if recorded.message_id is not None and inbound.location is not None:
        # Understood as it arrives: the reply task has nothing to read in it.
        MEDIA_ITEMS.labels("location", "understood").inc()
    if recorded.conversation_id is not None and state.runner is not None:
        if recorded.queued:
            state.runner.wake()
        else:
            # Committed already; the sweeper catches anything a crash right here would drop.
            await state.runner.defer(recorded.conversation_id, recorded.debounce_seconds)
    log.info(
        "webhook.duplicate" if recorded.message_id is None else "webhook.accepted",
        channel=channel.value,
        message_sid=inbound.sid,
        message_id=recorded.message_id,
        sender=inbound.sender,
        simulated=inbound.simulated,
    )
    log.debug("webhook.body", message_sid=inbound.sid, body=inbound.body)
    return recorded


async def _record_status(state: AppState, form: FormData, entry: WebhookEntry) -> None:
    update = parse_status(form)
    outcome = await record_status(state, update, entry)
    log.info(
        "webhook.status",
        message_sid=update.sid,
        status=update.status.value,
        error_code=update.error_code,
        outcome=outcome.value,
    )


@router.post("/whatsapp", responses=TWIML_RESPONSE, response_class=Response)
async def receive_whatsapp(request: Request) -> Response:
    """Twilio's inbound WhatsApp message webhook."""
    return await _handle(request, app_state(request), "whatsapp")


@router.post("/sms", responses=TWIML_RESPONSE, response_class=Response)
async def receive_sms(request: Request) -> Response:
    """Twilio's inbound SMS webhook."""
    return await _handle(request, app_state(request), "sms")


@router.post("/status", responses=TWIML_RESPONSE, response_class=Response)
async def receive_status(request: Request) -> Response:
    """Twilio's delivery status callback for the messages Plática sends."""
    return await _handle(request, app_state(request), "status")
