"""Twilio's webhook posts, built and signed as Twilio makes them, for messages that do not come
from Twilio: `platica simulate` (cli/simulate.py), the dashboard's phone simulator and the tests
(tests/factories.py, tests/fakes.py) all build theirs here."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from twilio.request_validator import RequestValidator

from platica.models import Channel

# What a simulated message carries as AccountSid when Twilio is not configured.
NO_ACCOUNT_SID = "AC" + "0" * 32
API_VERSION = "2010-04-01"


def new_message_sid() -> str:
    """A MessageSid of Twilio's shape (SM + 32 hexadecimal characters), unique."""
    return "SM" + uuid.uuid4().hex


def _common(
    channel: Channel, sender: str, recipient: str, sid: str, account_sid: str | None
) -> dict[str, str]:
    """The fields every post about message `sid` carries (inbound or status)."""
    prefix = "whatsapp:" if channel is Channel.whatsapp else ""
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": account_sid or NO_ACCOUNT_SID,
        "From": prefix + sender,
        "To": prefix + recipient,
        "ApiVersion": API_VERSION,
    }


def inbound_form(
    channel: Channel,
    sender: str,
    recipient: str,
    body: str,
    *,
    account_sid: str | None = None,
    sid: str | None = None,
    profile_name: str | None = None,
    media: Sequence[tuple[str, str]] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The form of an inbound message from `sender` to `recipient` (E.164 numbers): the fields
    of Twilio's real posts, WhatsApp's own (WaId, MessageType, and ProfileName when given),
    a MediaUrlN/MediaContentTypeN pair per (url, content type) of `media`, then `extra` (which
    may replace any of them)."""
    sid = sid or new_message_sid()
    form = _common(channel, sender, recipient, sid, account_sid)
    form.update(
        SmsMessageSid=sid,
        Body=body,
        NumMedia=str(len(media)),
        NumSegments="1",
        SmsStatus="received",
    )
    for index, (url, content_type) in enumerate(media):
        form[f"MediaUrl{index}"] = url
        form[f"MediaContentType{index}"] = content_type
    if channel is Channel.whatsapp:
        # MessageType: "text", or the first attachment's kind.
        kind = media[0][1].partition("/")[0] if media else "text"
        kind = kind if kind in ("text", "image", "audio", "video") else "document"
        form.update(WaId=sender.lstrip("+"), MessageType=kind)
        if profile_name is not None:
            form["ProfileName"] = profile_name
    form.update(extra or {})
    return form


def status_form(
    channel: Channel,
    sender: str,
    recipient: str,
    sid: str,
    status: str,
    *,
    account_sid: str | None = None,
    error_code: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The status callback of message `sid`, sent from `sender` to `recipient` (E.164), now
    `status`; WhatsApp's carry ChannelPrefix. `extra` may replace any field."""
    form = _common(channel, sender, recipient, sid, account_sid)
    form.update(MessageStatus=status, SmsStatus=status)
    if channel is Channel.whatsapp:
        form["ChannelPrefix"] = "whatsapp"
    if error_code is not None:
        form["ErrorCode"] = error_code
    form.update(extra or {})
    return form


def signature(
    form: Mapping[str, str],
    auth_token: str,
    base_url: str,
    path: str = "",
    *,
    algorithm: str | None = None,
) -> str:
    """X-Twilio-Signature of `form` posted to `path`: Twilio's own computation (the official
    RequestValidator) over base_url + path. Twilio signs the URL it posts to, which webhook.py
    takes to be PUBLIC_BASE_URL + path: pass PUBLIC_BASE_URL as `base_url`."""
    validator = RequestValidator(auth_token)
    return str(validator.compute_signature(base_url + path, dict(form), algorithm))
