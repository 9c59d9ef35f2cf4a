"""Twilio's form posts turned into typed values; Twilio's field names stop here (and in
conversations/statuses.py, which reads the status callback's form: the reply path replays it
from the webhook log)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from platica.conversations.statuses import StatusUpdate, parse_status, required, required_sid
from platica.errors import BadRequest
from platica.http import FormData, first, parse_form
from platica.media.kinds import kind_of, location_text
from platica.models import Channel, MediaKind, MediaState

__all__ = [
    "FormData",
    "InboundMessage",
    "Location",
    "Media",
    "StatusUpdate",
    "first",
    "media_rows",
    "parse_form",
    "parse_inbound",
    "parse_status",
]

MAX_MEDIA = 10
MAX_FIELD_LENGTH = 16_000


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Location:
    """A WhatsApp location: where, and the place's address and name when the contact sent one."""

    latitude: float
    longitude: float
    address: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    sid: str
    channel: Channel
    sender: str  # E.164 (or WhatsApp id), without the "whatsapp:" prefix
    recipient: str
    body: str
    media: tuple[Media, ...] = ()
    location: Location | None = None
    profile_name: str | None = None
    wa_id: str | None = None
    # Written in the dashboard's phone simulator: its replies are never sent to a real phone.
    simulated: bool = False


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
    sid = required_sid(form)
    sender = _address(required(form, "From"), "From", channel)
    recipient = _address(required(form, "To"), "To", channel)
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
        location=_location(form),
        profile_name=(first(form, "ProfileName") or None),
        wa_id=(first(form, "WaId") or None),
    )


def _coordinate(form: FormData, name: str, limit: float) -> float:
    text = required(form, name)
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {text[:20]!r}") from None
    if not -limit <= value <= limit:  # also refuses nan and inf
        raise BadRequest(f"{name} must be between {-limit:g} and {limit:g}")
    return value


def _location(form: FormData) -> Location | None:
    """The location a WhatsApp message shares (Latitude and Longitude, with Address and Label
    when the contact picked a place), or None."""
    if first(form, "Latitude") is None and first(form, "Longitude") is None:
        return None
    return Location(
        latitude=_coordinate(form, "Latitude", 90.0),
        longitude=_coordinate(form, "Longitude", 180.0),
        address=(first(form, "Address") or "")[:500] or None,
        label=(first(form, "Label") or "")[:200] or None,
    )


def media_rows(inbound: InboundMessage) -> list[dict[str, Any]]:
    """The media rows of an inbound message, in Twilio's order: each item `pending` (fetched
    later by the reply task, never in the request), then its location, understood already."""
    rows: list[dict[str, Any]] = [
        {
            "position": position,
            "kind": kind_of(item.content_type).value,
            "content_type": item.content_type[:128],
            "url": item.url,
            "state": MediaState.pending.value,
            "text": None,
            "error": None,
            "latitude": None,
            "longitude": None,
        }
        for position, item in enumerate(inbound.media)
    ]
    if inbound.location is not None:
        rows.append(
            {
                "position": len(rows),
                "kind": MediaKind.location.value,
                "content_type": "",
                "url": None,
                "state": MediaState.understood.value,
                "error": None,
                "text": location_text(
                    inbound.location.latitude,
                    inbound.location.longitude,
                    inbound.location.address,
                    inbound.location.label,
                ),
                "latitude": inbound.location.latitude,
                "longitude": inbound.location.longitude,
            }
        )
    return rows
