"""Twilio's form posts turned into typed values; Twilio's field names stop here.

Forms are decoded by platica.http (`parse_form`, `first`), re-exported here for the webhook."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from platica.errors import BadRequest
from platica.http import FormData, first
from platica.models import Channel, MessageStatus

SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
MAX_MEDIA = 10
MAX_FIELD_LENGTH = 16_000


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class InboundMessage:
    sid: str
    channel: Channel
    sender: str  # E.164 (or WhatsApp id), without the "whatsapp:" prefix
    recipient: str
    body: str
    media: tuple[Media, ...] = ()
    profile_name: str | None = None
    wa_id: str | None = None
    # Written in the dashboard's phone simulator: its replies are never sent to a real phone.
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    sid: str
    status: MessageStatus
    error_code: int | None = None
    error_message: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _required(form: FormData, name: str) -> str:
    value = (first(form, name) or "").strip()
    if not value:
        raise BadRequest(f"missing required field {name}")
    if len(value) > 64 and name != "Body":
        raise BadRequest(f"field {name} is too long")
    return value


def _sid(form: FormData, name: str = "MessageSid") -> str:
    sid = _required(form, name)
    if not SID.match(sid):
        raise BadRequest(f"{name} must be two letters and 32 hexadecimal characters")
    return sid


def _address(value: str, name: str, channel: Channel) -> str:
    is_whatsapp = value.startswith("whatsapp:")
    if channel is Channel.whatsapp and not is_whatsapp:
        raise BadRequest(f"{name} must be a WhatsApp address (whatsapp:+E164) on this webhook")
    if channel is Channel.sms and is_whatsapp:
        raise BadRequest(
            f"{name} is a WhatsApp address; post WhatsApp messages to /webhook/whatsapp"
        )
    address = value.removeprefix("whatsapp:").strip()
    if not address or any(ch.isspace() or ord(ch) < 32 for ch in address):
        raise BadRequest(f"{name} is not a valid address")
    return address


def parse_inbound(form: FormData, channel: Channel) -> InboundMessage:
    """Validate and extract an inbound message from Twilio's webhook form."""
    sid = _sid(form)
    sender = _address(_required(form, "From"), "From", channel)
    recipient = _address(_required(form, "To"), "To", channel)
    body = first(form, "Body") or ""
    if len(body) > MAX_FIELD_LENGTH:
        raise BadRequest(f"Body is longer than {MAX_FIELD_LENGTH} characters")
    num_media_text = first(form, "NumMedia") or "0"
    try:
        num_media = int(num_media_text)
    except ValueError:
        raise BadRequest(f"NumMedia must be a whole number, got {num_media_text[:20]!r}") from None
    if not 0 <= num_media <= MAX_MEDIA:
        raise BadRequest(f"NumMedia must be between 0 and {MAX_MEDIA}")
    media = []
    for index in range(num_media):
        url = first(form, f"MediaUrl{index}")
        if not url:
            raise BadRequest(f"NumMedia is {num_media} but MediaUrl{index} is missing")
        media.append(Media(url=url, content_type=first(form, f"MediaContentType{index}") or ""))
    return InboundMessage(
        sid=sid,
        channel=channel,
        sender=sender,
        recipient=recipient,
        body=body,
        media=tuple(media),
        profile_name=(first(form, "ProfileName") or None),
        wa_id=(first(form, "WaId") or None),
    )


def parse_status(form: FormData) -> StatusUpdate:
    """Validate and extract a delivery status callback."""
    sid = _sid(form)
    raw_status = (first(form, "MessageStatus") or first(form, "SmsStatus") or "").strip().lower()
    if not raw_status:
        raise BadRequest("missing required field MessageStatus")
    try:
        status = MessageStatus(raw_status)
    except ValueError:
        raise BadRequest(f"unknown MessageStatus {raw_status[:30]!r}") from None
    raw_code = (first(form, "ErrorCode") or "").strip()
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses.
    is_number = raw_code.isascii() and raw_code.isdigit() and len(raw_code) < 9
    error_code = int(raw_code) if is_number else None
    extra = {}
    if raw_code and error_code is None:
        # Some errors come as words (e.g. the sandbox's InvalidSandboxRequest).
        extra["ErrorCode"] = raw_code[:100]
    error_message = first(form, "ErrorMessage") or extra.get("ErrorCode")
    return StatusUpdate(
        sid=sid, status=status, error_code=error_code, error_message=error_message, extra=extra
    )
