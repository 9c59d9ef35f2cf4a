"""WhatsApp's customer-service window: free text may go to a contact only within 24 hours of
their last message; after that, only an approved template (Twilio error 63016 otherwise). Each
inbound message opens the window again. SMS has no window."""

from __future__ import annotations

from datetime import datetime, timedelta

from platica.models import Channel

WINDOW = timedelta(hours=24)
# Twilio's error for free text outside the window: recorded, never retried.
OUTSIDE_WINDOW = 63016
OUTSIDE_WINDOW_ERROR = (
    "not sent: more than 24 hours since the contact last wrote (WhatsApp's customer-service "
    "window); only an approved template can reach them now"
)


def window_closes_at(channel: Channel | str, last_inbound_at: datetime | None) -> datetime | None:
    """When the contact's window closes (closed already if in the past); None on SMS, or on
    WhatsApp when the contact never wrote (no window has opened)."""
    if channel != Channel.whatsapp or last_inbound_at is None:
        return None
    return last_inbound_at + WINDOW


def window_open(channel: Channel | str, last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether free text may go to the contact now."""
    if channel != Channel.whatsapp:
        return True
    closes = window_closes_at(channel, last_inbound_at)
    return closes is not None and now < closes
