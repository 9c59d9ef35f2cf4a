"""Test data: Twilio-shaped webhook forms, signed with the official SDK. The forms and the
signature are platica.channels.forms' (what `platica simulate` posts); this adds the tests'
account, numbers and defaults."""

from __future__ import annotations

import uuid

import httpx

from platica.channels import forms
from platica.models import Channel

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
    """An inbound message webhook as Twilio posts it (the real payloads' field set), from
    CONTACT to the test number of `channel`; `extra` fields replace or add to it."""
    kind = Channel(channel)
    return forms.inbound_form(
        kind,
        sender,
        to or (WHATSAPP_NUMBER if kind is Channel.whatsapp else SMS_NUMBER),
        body,
        account_sid=ACCOUNT_SID,
        sid=sid or new_sid(),
        profile_name="Ana" if kind is Channel.whatsapp else None,
        # A geographic field of real SMS posts, which Plática ignores (but signs).
        extra={"ToCountry": "US", **extra},
    )


def status_form(sid: str, status: str, **extra: str) -> dict[str, str]:
    """The status callback of an SMS from the test number to CONTACT."""
    return forms.status_form(
        Channel.sms, SMS_NUMBER, CONTACT, sid, status, account_sid=ACCOUNT_SID, extra=extra
    )


def sign(url: str, form: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature of `form` posted to `url` (the whole URL Twilio signs)."""
    return forms.signature(form, token, url)


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
