"""Test data: Twilio-shaped webhook forms, signed with the official SDK."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
ACCOUNT_SID = "AC" + "a1" * 16
SMS_NUMBER = "+15005550006"
WHATSAPP_NUMBER = "+14155238886"
CONTACT = "+34600111222"


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


def inbound_form(
    channel: str = "sms",
    *,
    body: str = "Hola",
    sender: str = CONTACT,
    to: str | None = None,
    sid: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """An inbound message webhook as Twilio posts it (the real payloads' field set)."""
    sid = sid or new_sid()
    whatsapp = channel == "whatsapp"
    prefix = "whatsapp:" if whatsapp else ""
    to = to or (WHATSAPP_NUMBER if whatsapp else SMS_NUMBER)
    form = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": prefix + to,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": prefix + sender,
        "ApiVersion": "2010-04-01",
    }
    if whatsapp:
        form.update(ProfileName="Ana", WaId=sender.lstrip("+"), MessageType="text")
    form.update(extra)
    return form


def status_form(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "From": SMS_NUMBER,
        "To": CONTACT,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def sign(url: str, form: dict[str, Any], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, form))


def post_signed(
    client: httpx.Client,
    base_url: str,
    path: str,
    form: dict[str, str],
    *,
    signed_url: str | None = None,
    token: str = AUTH_TOKEN,
) -> httpx.Response:
    """POST `form` to base_url+path, signed over `signed_url` (default: the URL posted to)."""
    url = base_url + path
    signature = sign(signed_url or url, form, token)
    return client.post(url, data=form, headers={"X-Twilio-Signature": signature})
