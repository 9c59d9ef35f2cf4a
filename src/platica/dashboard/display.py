"""How the dashboard shows things in words: statuses, delivery states, Twilio error codes, times.

The words are English msgids, marked with `N_` where they sit in a table and translated where
they are shown (dashboard/i18n.py); numbers follow the request's locale (Babel)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from babel.numbers import format_decimal
from pydantic import ValidationError

from platica.conversations.operators import ConversationView
from platica.dashboard.i18n import N_, _, current_locale, ngettext
from platica.logging import mask_phone
from platica.models import Channel, ConversationStatus, MessageStatus

CHANNEL_NAMES = {Channel.whatsapp.value: "WhatsApp", Channel.sms.value: "SMS"}

# The four states an operator tells conversations apart by, as the inbox filter offers them.
CONVERSATION_STATES = {
    "active": N_("Active"),
    "handed_off": N_("Handed off"),
    "opted_out": N_("Opted out"),
    "closed": N_("Closed"),
}

DELIVERY_STATES: dict[str, str] = {
    MessageStatus.received: N_("received"),
    MessageStatus.pending: N_("waiting to be sent"),
    MessageStatus.accepted: N_("accepted by Twilio"),
    MessageStatus.scheduled: N_("scheduled"),
    MessageStatus.queued: N_("queued"),
    MessageStatus.sending: N_("sending"),
    MessageStatus.sent: N_("sent"),
    MessageStatus.delivered: N_("delivered"),
    MessageStatus.read: N_("read"),
    MessageStatus.failed: N_("failed"),
    MessageStatus.undelivered: N_("not delivered"),
    MessageStatus.canceled: N_("canceled"),
    MessageStatus.dry_run: N_("not sent (dry run: Twilio is not configured)"),
}

# Twilio's error codes operators meet most, in words. https://www.twilio.com/docs/api/errors
TWILIO_ERRORS: dict[int, str] = {
    21211: N_("the number is not a valid phone number"),
    21408: N_("sending to this region is not enabled on the Twilio account"),
    21608: N_("a trial account can only send to verified numbers"),
    21610: N_("the recipient unsubscribed (replied STOP)"),
    21614: N_("the number is not a mobile number"),
    30003: N_("the handset is unreachable (switched off or out of coverage)"),
    30005: N_("the number is unknown or no longer in service"),
    30006: N_("a landline, or a carrier that cannot receive messages"),
    30007: N_("the carrier filtered the message (spam filtering)"),
    30008: N_("unknown error from the carrier"),
    63016: N_("outside WhatsApp's 24-hour window: only a template can be sent now"),
}


# What the reply path writes on a message (`messages.note`) or a contact (`flag_reason`), in
# English in the database and the API; the dashboard shows the known ones in its language.
STORED_NOTES = {
    note: note
    for note in (
        N_("opted out, confirmation sent"),
        N_("opted in again, confirmation sent"),
        N_("help message sent"),
        N_("opted out already"),
        N_("not opted out, nothing to confirm"),
        N_("contact opted out, no help message sent"),
        N_("daily token budget spent: busy message sent"),
        N_("daily token budget spent: busy message sent earlier today"),
        N_("AI disabled for this channel"),
        N_("conversation closed"),
        N_("contact opted out"),
        N_("the contact sent STOP right after"),
        N_("flood: over RATE_LIMIT_FLOOD, not answered"),
        N_("sent more than RATE_LIMIT_FLOOD allows"),
        N_("answered by an operator"),
    )
}


def note(text: str | None) -> str | None:
    """A stored note in the request's language when it is a known one, else as stored."""
    if text is None or text not in STORED_NOTES:
        return text
    return _(STORED_NOTES[text])


def conversation_state(view: ConversationView, now: datetime | None = None) -> str:
    """One of CONVERSATION_STATES: closed wins, then opted out, then a live handoff."""
    conversation = view.conversation
    if conversation.status == ConversationStatus.closed:
        return "closed"
    if view.opted_out:
        return "opted_out"
    if handed_off(view, now):
        return "handed_off"
    return "active"


def handed_off(view: ConversationView, now: datetime | None = None) -> bool:
    """An operator has the conversation (a handoff whose time has run out no longer counts)."""
    conversation = view.conversation
    if conversation.ai_enabled:
        return False
    until = conversation.handoff_until
    return until is None or until > (now or datetime.now(UTC))


SIMULATED_DRY_RUN = N_("not sent (dry run: the simulator's replies are never sent)")


def delivery_state(status: str, *, simulated: bool = False) -> str:
    if simulated and status == MessageStatus.dry_run:
        return _(SIMULATED_DRY_RUN)
    known = DELIVERY_STATES.get(status)
    return _(known) if known else status


def error_text(code: int | None) -> str | None:
    if code is None:
        return None
    return _(TWILIO_ERRORS.get(code, N_("see Twilio's error reference for this code")))


def masked(contact: str) -> str:
    return mask_phone(contact)


def milliseconds(value: float | None) -> str:
    """A duration for people: 850 ms, 2.4 s, 3 min."""
    if value is None:
        return _("no data")
    if value < 1000:
        return f"{decimal(round(value))} ms"
    if value < 60_000:
        return f"{decimal(round(value / 1000, 1), '0.0')} s"
    return f"{decimal(round(value / 60_000))} min"


def decimal(value: float, pattern: str | None = None) -> str:
    """A number in the request's locale: 12,345.5 in English, 12.345,5 in Spanish."""
    return format_decimal(value, format=pattern, locale=current_locale())


def timestamp(moment: datetime | None) -> str:
    """UTC, to the minute; the browser rewrites it in local time (app.js)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


def count(number: int, noun: str) -> str:
    """`1 message`, `3 messages` (English nouns; `count_messages` speaks the request's language)."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def count_messages(number: int) -> str:
    """`1 message`, `3 messages` (`1 mensaje`, `3 mensajes`)."""
    return ngettext("%(num)s message", "%(num)s messages", number) % {"num": decimal(number)}


def waited(seconds: float) -> str:
    """A wait in words: `40 s`, `3 min`, `2 h`."""
    if seconds < 90:
        return f"{max(int(seconds), 0)} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min"
    return f"{int(seconds // 3600)} h"


def time_left(until: datetime, now: datetime) -> str:
    """What is left until `until`, to the minute: `5 h 12 min`, `1 h`, `59 min` (app.js counts
    it down in the same words)."""
    minutes = max(int((until - now).total_seconds() // 60), 0)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min" if minutes else _("under 1 min")
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def time_ago(moment: datetime, now: datetime) -> str:
    """How long ago `moment` was: `12 min`, `3 h`, `4 days` (the same words as app.js)."""
    minutes = max(int((now - moment).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    days = minutes // (24 * 60)
    return ngettext("%(num)s day", "%(num)s days", days) % {"num": days}


def field_errors(invalid: ValidationError) -> dict[str, str]:
    """Pydantic's errors by field name, phrased to follow the field's label."""
    errors: dict[str, str] = {}
    for problem in invalid.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "form"
        errors.setdefault(
            name, _in_words(problem["type"], problem.get("ctx") or {}, problem["msg"])
        )
    return errors


# Pydantic's error types, in words ({ge} and friends come from the error's context).
PHRASES = {
    "int_parsing": N_("must be a whole number"),
    "int_from_float": N_("must be a whole number"),
    "float_parsing": N_("must be a number"),
    "greater_than_equal": N_("must be at least {ge}"),
    "greater_than": N_("must be more than {gt}"),
    "less_than_equal": N_("must be at most {le}"),
    "string_too_short": N_("must not be empty"),
    "string_too_long": N_("must be at most {max_length} characters"),
    "string_pattern_mismatch": N_("may contain only letters, digits and . : / @ + - _"),
    "literal_error": N_("must be {expected}"),
}


def _in_words(kind: str, context: dict[str, Any], message: str) -> str:
    if kind in PHRASES:
        return _(PHRASES[kind]).format(**{k: number(v) for k, v in context.items()})
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def number(value: Any) -> Any:
    """2.0 -> "2", 0.25 -> "0.25": floats as people write them."""
    return f"{value:g}" if isinstance(value, float) else value
