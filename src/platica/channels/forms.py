"""Inbound messages as Twilio posts them, for test messages: `platica simulate` and the
dashboard's phone simulator build the same form, with the fields Twilio's real posts carry."""

from __future__ import annotations

import uuid

from platica.models import Channel

# What a simulated message carries as AccountSid when Twilio is not configured.
NO_ACCOUNT_SID = "AC" + "0" * 32


def new_message_sid() -> str:
    """A MessageSid of Twilio's shape (SM + 32 hexadecimal characters), unique."""
    return "SM" + uuid.uuid4().hex


def inbound_form(
    channel: Channel,
    sender: str,
    recipient: str,
    body: str,
    *,
    account_sid: str | None = None,
    sid: str | None = None,
) -> dict[str, str]:
    """The form of an inbound message from `sender` to `recipient` (E.164 numbers)."""
    prefix = "whatsapp:" if channel is Channel.whatsapp else ""
    sid = sid or new_message_sid()
    return {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": account_sid or NO_ACCOUNT_SID,
        "From": f"{prefix}{sender}",
        "To": f"{prefix}{recipient}",
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
