"""`platica simulate`: a signed test webhook, posted as Twilio would, and the reply it got."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from sqlalchemy.exc import OperationalError

from platica import db
from platica.accounts import DEMO_NUMBERS
from platica.channels.forms import inbound_form, signature
from platica.cli.common import load_settings, parse_e164
from platica.config import Settings
from platica.models import Channel

# How often a poll that finds the SQLite database locked is asked again (0.2 s apart).
BUSY_RETRIES = 25


class ChannelChoice(StrEnum):
    whatsapp = "whatsapp"
    sms = "sms"


def simulate(
    text: Annotated[str, typer.Argument(help="The message text.")],
    channel: Annotated[ChannelChoice, typer.Option(help="sms or whatsapp.")] = ChannelChoice.sms,
    from_: Annotated[str, typer.Option("--from", help="The sender (E.164).")] = "+15550100001",
    to: Annotated[
        str | None, typer.Option(help="The account's number (default: the configured one).")
    ] = None,
    url: Annotated[str, typer.Option(help="Where Plática is running.")] = "http://127.0.0.1:8000",
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the reply (0: don't wait).", min=0)
    ] = 30.0,
) -> None:
    """Post a signed test webhook to a running Plática, as Twilio would, and print the reply."""
    settings = load_settings()
    sender = parse_e164(from_, "--from")
    chosen = Channel(channel.value)
    configured = (
        settings.TWILIO_WHATSAPP_NUMBER
        if chosen is Channel.whatsapp
        else settings.TWILIO_PHONE_NUMBER
    )
    recipient = parse_e164(to, "--to") or configured or DEMO_NUMBERS[chosen]
    assert sender is not None  # --from has a default
    if wait > 0:
        # Before anything is posted: a reply that could not be read would be a message sent
        # for nothing (and SQLite would create an empty ./platica.db where there was none).
        problem = _reply_database_problem(settings)
        if problem is not None:
            typer.echo(f"Error: cannot wait for the reply: {problem}", err=True)
            raise typer.Exit(2)
    form = inbound_form(chosen, sender, recipient, text, account_sid=settings.TWILIO_ACCOUNT_SID)
    sid = form["MessageSid"]
    path = f"/webhook/{chosen.value}"
    post_url = url.rstrip("/") + path
    headers = {}
    if settings.TWILIO_AUTH_TOKEN is not None:
        token = settings.TWILIO_AUTH_TOKEN.get_secret_value()
        base_url = settings.PUBLIC_BASE_URL or url.rstrip("/")
        headers["X-Twilio-Signature"] = signature(form, token, base_url, path)
    try:
        response = httpx.post(post_url, data=form, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        typer.echo(f"Error: could not reach Plática at {url}: {error}", err=True)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        typer.echo(f"Error: Plática answered {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Accepted: {sid} from {sender} to {recipient} on {chosen.value}.")
    if wait > 0:
        outcome, answered = asyncio.run(_wait_for_reply(settings, sid, wait))
        if not answered:
            typer.echo(outcome, err=True)
            raise typer.Exit(1)
        typer.echo(outcome)


_WHERE_TO_READ = (
    "run simulate from the server's folder, set DATABASE_URL to the server's database, "
    "or pass --wait 0 not to wait"
)


def _reply_database_problem(settings: Settings) -> str | None:
    """Why the reply could not be read from DATABASE_URL, in one line; None when it can.
    Opens nothing that is not there: SQLite would create a missing file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from platica.config import redact_url

    url = settings.DATABASE_URL
    shown = redact_url(url)
    if settings.is_sqlite:
        path = make_url(url).database or ""
        shown = path
        if not Path(path).is_file():
            return f"the database {path} (DATABASE_URL) does not exist here; {_WHERE_TO_READ}"
    try:
        revision = db.current_revision(url)
    except SQLAlchemyError as error:
        cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return f"could not connect to {shown} (DATABASE_URL): {cause}; {_WHERE_TO_READ}"
    if revision is None:
        return f"{shown} (DATABASE_URL) is not Plática's database (no tables); {_WHERE_TO_READ}"
    if revision != db.head_revision():
        return (
            f"{shown} (DATABASE_URL) is at revision {revision}, not {db.head_revision()}; "
            "run `platica db upgrade` with the server's settings"
        )
    return None


async def _wait_for_reply(settings: Settings, sid: str, seconds: float) -> tuple[str, bool]:
    """Poll the database until the message is answered (or skipped): what happened, in words,
    and whether it was; at the deadline, what is stored about why not."""
    from platica.conversations.service import find_reply

    engine = db.create_engine(settings.DATABASE_URL)
    sessionmaker = db.create_sessionmaker(engine)

    async def read(query: Any) -> Any:
        # On SQLite every transaction takes the write lock first (db/engine.py): a poll that
        # meets the server's writer at the deadline's cancellation is asked again, not fatal.
        for attempt in range(BUSY_RETRIES):
            try:
                async with sessionmaker() as session:
                    return await query(session)
            except OperationalError as error:
                if "database is locked" not in str(error) or attempt == BUSY_RETRIES - 1:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    try:
        async with asyncio.timeout(seconds):
            while True:
                reply = await read(lambda session: find_reply(session, sid))
                if reply is not None:
                    return reply, True
                await asyncio.sleep(0.2)
    except TimeoutError:
        return await read(lambda session: _why_unanswered(session, sid, seconds)), False
    finally:
        await engine.dispose()


async def _why_unanswered(session: Any, sid: str, seconds: float) -> str:
    """What the database says about a message still unanswered after `seconds`."""
    from sqlalchemy import select

    from platica.conversations.repository import reply_parts
    from platica.models import Message, ReplyState

    within = f"within {seconds:g} s"
    inbound = await session.scalar(select(Message).where(Message.twilio_sid == sid))
    if inbound is None:
        return (
            f"No reply {within}: the message is not in {_redact_url(session)}; "
            "is DATABASE_URL the server's database?"
        )
    if inbound.reply_state == ReplyState.failed:
        return f"Not answered: the reply failed ({inbound.note or 'no reason stored'})."
    parts = await reply_parts(session, inbound)
    failing = [part for part in parts if part.error_message or part.error_code]
    if failing:
        part = failing[0]
        code = f" {part.error_code}" if part.error_code else ""
        return (
            f"Reply not sent {within} (status {part.status}{code}, {part.attempts} attempt(s)): "
            f"{part.error_message or 'no message from Twilio'}; Plática keeps retrying, and the "
            "server's log (reply.send_retry) says more."
        )
    if parts:
        states = ", ".join(str(part.status) for part in parts)
        return f"Reply not sent {within}: written, still {states}."
    return (
        f"No reply {within}: the message still waits for its reply (the account's debounce "
        "window, or no worker is answering: see the server's log)."
    )


def _redact_url(session: Any) -> str:
    return str(session.get_bind().url.render_as_string(hide_password=True))
