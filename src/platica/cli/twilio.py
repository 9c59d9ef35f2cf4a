"""`platica twilio connect`: point the SMS numbers and WhatsApp senders at PUBLIC_BASE_URL's
webhooks through Twilio's API (IncomingPhoneNumbers, the Senders API), or say how in the Console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from platica.cli.common import load_settings
from platica.cli.doctor import ChannelRow, configured_numbers, quiet_logging, read_channels
from platica.config import Settings
from platica.logging import mask_phone
from platica.models import Channel

twilio_app = typer.Typer(
    help="Twilio: point the numbers and WhatsApp senders at Plática.", no_args_is_help=True
)


def say(text: str) -> None:
    """A line on stdout, its phone numbers masked."""
    typer.echo(mask_phone(text))


class TwilioRefused(Exception):
    """Twilio refused the credentials: nothing else can be done."""


@twilio_app.command("connect")
def connect(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
) -> None:
    """Set each SMS number's SmsUrl (POST) and StatusCallback, and each WhatsApp sender's
    webhook, to PUBLIC_BASE_URL's paths; those already right are left alone."""
    settings = load_settings()
    if not settings.twilio_configured:
        typer.echo(
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: required to connect the numbers "
            "(the Twilio Console's Account Info)",
            err=True,
        )
        raise typer.Exit(2)
    if not settings.PUBLIC_BASE_URL:
        typer.echo(
            "PUBLIC_BASE_URL: required: the public URL Twilio calls "
            "(e.g. https://abc123.ngrok-free.app)",
            err=True,
        )
        raise typer.Exit(2)
    quiet_logging(settings)
    channels = _accounts_channels(settings)
    if channels is None:
        typer.echo(
            "Note: the database is not reachable or not migrated: only TWILIO_PHONE_NUMBER and "
            "TWILIO_WHATSAPP_NUMBER are connected, not the accounts' numbers.",
            err=True,
        )
        channels = []
    sms = configured_numbers(settings, channels, Channel.sms)
    whatsapp = configured_numbers(settings, channels, Channel.whatsapp)
    if not sms and not whatsapp:
        typer.echo(
            "Error: no number to connect: set TWILIO_PHONE_NUMBER or TWILIO_WHATSAPP_NUMBER, "
            "or give an account a number (`platica accounts set-number`)",
            err=True,
        )
        raise typer.Exit(1)
    from platica.channels.numbers import blocking_client

    client = blocking_client(settings)
    base = settings.PUBLIC_BASE_URL
    failed = 0
    try:
        for number, users in sms.items():
            failed += _connect_sms(client, number, users, base, dry_run=dry_run)
        for number, users in whatsapp.items():
            failed += _connect_whatsapp(client, number, users, base, dry_run=dry_run)
    except TwilioRefused as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(1 if failed else 0)


def _accounts_channels(settings: Settings) -> list[ChannelRow] | None:
    """The accounts' channels when the database is at head; None otherwise (never migrated
    here, never created: connecting changes nothing but Twilio)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from platica import db

    if settings.is_sqlite:
        path = make_url(db.sync_url(settings.DATABASE_URL)).database
        if not path or path == ":memory:" or not Path(path).exists():
            return None
    try:
        if db.current_revision(settings.DATABASE_URL) != db.head_revision():
            return None
        return read_channels(settings)
    except (SQLAlchemyError, OSError):
        return None


def _twilio(call: Any, label: str) -> tuple[bool, Any]:
    """(True, the call's result), or (False, None) with Twilio's refusal printed; TwilioRefused
    for a 401 (no other call would do better)."""
    from twilio.base.exceptions import TwilioException, TwilioRestException

    from platica.outreach.content import answered_status

    try:
        return True, call()
    except (TwilioException, OSError) as error:
        status = answered_status(error)
        if status == 401:
            raise TwilioRefused(
                "Twilio refused the credentials (401): check TWILIO_ACCOUNT_SID and "
                "TWILIO_AUTH_TOKEN (`platica doctor` checks them)"
            ) from error
        if isinstance(error, TwilioRestException):
            say(f"{label}: Twilio answered {status} (code {error.code}): {error.msg}")
        elif status is not None:
            say(f"{label}: Twilio answered {status}")
        else:
            say(f"{label}: Twilio could not be reached ({type(error).__name__})")
    return False, None


def _show(label: str, changes: list[Any]) -> bool:
    """Print the fields' before → after; whether any must change."""
    if not any(change.needed for change in changes):
        say(f"{label}: already connected")
        return False
    say(f"{label}:")
    for change in changes:
        if change.needed:
            say(f"  {change.field}: {change.before or '(unset)'} → {change.after or '(unset)'}")
        else:
            say(f"  {change.field}: {change.after} (unchanged)")
    return True


def _connect_sms(client: Any, number: str, users: list[str], base: str, *, dry_run: bool) -> int:
    """Connect one SMS number; 1 when it could not be, else 0."""
    from platica.channels.numbers import connect_number, find_number

    label = f"SMS {number} ({', '.join(users)})"
    done, hooks = _twilio(lambda: find_number(client, number), label)
    if not done:
        return 1
    if hooks is None:
        say(
            f"{label}: not on the Twilio account: buy or port it (Twilio Console → Phone "
            "Numbers), or correct the number"
        )
        return 1
    if not _show(label, hooks.changes(base)):
        return 0
    if dry_run:
        say("  dry run: nothing changed")
        return 0
    done, _ = _twilio(lambda: connect_number(client, hooks, base), label)
    if done:
        say("  connected")
    return 0 if done else 1


def _connect_whatsapp(
    client: Any, number: str, users: list[str], base: str, *, dry_run: bool
) -> int:
    """Connect one WhatsApp sender through the Senders API; 1 when the API could not be used
    (the Console's steps printed instead), else 0 (the Sandbox's steps printed: it has no API)."""
    from platica.channels.numbers import connect_sender, find_sender, sandbox_steps, sender_steps

    label = f"WhatsApp {number} ({', '.join(users)})"
    done, hooks = _twilio(lambda: find_sender(client, number), label)
    if not done:
        say(f"  set it by hand: {sender_steps(number, base)}")
        return 1
    if hooks is None:
        say(
            f"{label}: not a sender of the Senders API (the Sandbox, or a sender still being "
            "registered); its webhook is set in the Console:"
        )
        say(f"  {sandbox_steps(base)}")
        return 0
    if not _show(label, hooks.changes(base)):
        return 0
    if dry_run:
        say("  dry run: nothing changed")
        return 0
    done, _ = _twilio(lambda: connect_sender(client, hooks, base), label)
    if done:
        say("  connected")
        return 0
    say(f"  set it by hand: {sender_steps(number, base)}")
    return 1
