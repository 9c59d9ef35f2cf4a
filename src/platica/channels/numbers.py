"""The webhooks of the account's numbers and WhatsApp senders on Twilio: where they point, where
they should point (PUBLIC_BASE_URL's paths), and setting them, through the official SDK
(IncomingPhoneNumbers, and the Senders API for WhatsApp). Blocking: for the command line
(`platica doctor`, `platica twilio connect`), never for the service's event loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from platica.channels.sender import twilio_client
from platica.config import Settings

# The webhook routes of channels/webhook.py, as Twilio must be told them (SPEC §3).
SMS_PATH = "/webhook/sms"
WHATSAPP_PATH = "/webhook/whatsapp"
STATUS_PATH = "/webhook/status"
TWILIO_TIMEOUT_SECONDS = 15.0
# Where a WhatsApp number that is no sender of the Senders API (the Sandbox, say) is set up.
SANDBOX_STEPS = (
    "Twilio Console → Messaging → Try it out → Send a WhatsApp message → Sandbox settings: "
    "set “When a message comes in” to {inbound} (POST) and “Status callback URL” to {status} "
    "(POST), then Save"
)

# Where a WhatsApp sender's webhook is set by hand, when the Senders API cannot be used.
SENDER_STEPS = (
    "Twilio Console → Messaging → Senders → WhatsApp senders → {number} → Endpoint "
    "configuration: set “Webhook URL for incoming messages” to {inbound} (POST) and “Status "
    "callback URL” to {status}, then Update"
)


def blocking_client(settings: Settings) -> Client:
    """The SDK's client for the command line: blocking, every request bounded."""
    return twilio_client(settings, TwilioHttpClient(timeout=TWILIO_TIMEOUT_SECONDS))


@dataclass(frozen=True, slots=True)
class Change:
    """One webhook field of a number or sender: what Twilio has, and what Plática needs."""

    field: str
    before: str
    after: str

    @property
    def needed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True, slots=True)
class NumberHooks:
    """An IncomingPhoneNumber's messaging webhooks, as Twilio has them ("" when unset)."""

    sid: str
    phone_number: str
    sms_url: str
    sms_method: str
    status_callback: str
    sms_application_sid: str

    def changes(self, public_base_url: str) -> list[Change]:
        """Each field Plática needs set: SmsUrl (POST) and StatusCallback at PUBLIC_BASE_URL,
        and no SMS application (one would override SmsUrl)."""
        changes = [
            Change("SmsUrl", self.sms_url, public_base_url + SMS_PATH),
            Change("SmsMethod", self.sms_method.upper(), "POST"),
            Change("StatusCallback", self.status_callback, public_base_url + STATUS_PATH),
        ]
        if self.sms_application_sid:
            changes.append(Change("SmsApplicationSid", self.sms_application_sid, ""))
        return changes


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def find_number(client: Client, number: str) -> NumberHooks | None:
    """The account's IncomingPhoneNumber `number` (E.164), or None when the account has none."""
    for item in client.incoming_phone_numbers.list(phone_number=number, limit=50):
        if item.phone_number == number and item.sid:
            return NumberHooks(
                sid=item.sid,
                phone_number=number,
                sms_url=_text(item.sms_url),
                sms_method=_text(item.sms_method),
                status_callback=_text(item.status_callback),
                sms_application_sid=_text(item.sms_application_sid),
            )
    return None


def connect_number(client: Client, hooks: NumberHooks, public_base_url: str) -> None:
    """Point the number's SmsUrl (POST) and StatusCallback at PUBLIC_BASE_URL (one update)."""
    extra: dict[str, Any] = {}
    if hooks.sms_application_sid:
        extra["sms_application_sid"] = ""
    client.incoming_phone_numbers(hooks.sid).update(
        sms_url=public_base_url + SMS_PATH,
        sms_method="POST",
        status_callback=public_base_url + STATUS_PATH,
        **extra,
    )


@dataclass(frozen=True, slots=True)
class SenderHooks:
    """A WhatsApp sender's webhook, as the Senders API has it ("" when unset)."""

    sid: str
    phone_number: str
    status: str
    callback_url: str
    callback_method: str
    status_callback_url: str

    def changes(self, public_base_url: str) -> list[Change]:
        return [
            Change("callback_url", self.callback_url, public_base_url + WHATSAPP_PATH),
            Change("callback_method", self.callback_method.upper(), "POST"),
            Change("status_callback_url", self.status_callback_url, public_base_url + STATUS_PATH),
        ]


def find_sender(client: Client, number: str) -> SenderHooks | None:
    """The account's WhatsApp sender `whatsapp:<number>`, or None (the Sandbox's number is no
    sender: its webhook is set in the Console only)."""
    for item in client.messaging.v2.channels_senders.list(channel="whatsapp", limit=1000):
        if item.sender_id == f"whatsapp:{number}" and item.sid:
            # The SDK types `webhook` as a string; the API answers an object.
            webhook: Any = item.webhook if isinstance(item.webhook, dict) else {}
            return SenderHooks(
                sid=item.sid,
                phone_number=number,
                status=_text(item.status),
                callback_url=_text(webhook.get("callback_url")),
                callback_method=_text(webhook.get("callback_method")),
                status_callback_url=_text(webhook.get("status_callback_url")),
            )
    return None


@dataclass(frozen=True, slots=True)
class _WebhookUpdate:
    """The Senders API update body with only the webhook's fields Plática sets: the SDK's own
    model would send every other field as null."""

    webhook: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"webhook": dict(self.webhook)}


def connect_sender(client: Client, hooks: SenderHooks, public_base_url: str) -> None:
    """Point the sender's inbound webhook (POST) and status callback at PUBLIC_BASE_URL."""
    body = _WebhookUpdate(
        {
            "callback_url": public_base_url + WHATSAPP_PATH,
            "callback_method": "POST",
            "status_callback_url": public_base_url + STATUS_PATH,
            "status_callback_method": "POST",
        }
    )
    client.messaging.v2.channels_senders(hooks.sid).update(body)


def sandbox_steps(public_base_url: str) -> str:
    """The Console steps for a WhatsApp number that the Senders API does not have."""
    return SANDBOX_STEPS.format(
        inbound=public_base_url + WHATSAPP_PATH, status=public_base_url + STATUS_PATH
    )


def sender_steps(number: str, public_base_url: str) -> str:
    """The Console steps for a WhatsApp sender whose webhook the API could not set."""
    return SENDER_STEPS.format(
        number=number, inbound=public_base_url + WHATSAPP_PATH, status=public_base_url + STATUS_PATH
    )
