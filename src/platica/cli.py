"""The `platica` command: serve, db upgrade, accounts create, simulate."""

from __future__ import annotations

import asyncio
import uuid
from enum import StrEnum
from typing import Annotated

import httpx
import typer
from twilio.request_validator import RequestValidator

from platica import db
from platica.accounts import DEMO_NUMBERS, create_account
from platica.config import E164, ConfigError, Settings, get_settings, strip_channel_prefix
from platica.models import Channel

app = typer.Typer(
    help="Plática: answers WhatsApp and SMS conversations with an LLM, through Twilio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts and their API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")


class ChannelChoice(StrEnum):
    whatsapp = "whatsapp"
    sms = "sms"


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def _e164(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    number = strip_channel_prefix(value.strip())
    if not E164.match(number):
        raise typer.BadParameter(
            f"must be an E.164 number like +14155550100, got {value!r}", param_hint=option
        )
    return number


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[
        bool, typer.Option(help="Also answer messages in this process (--no-worker: API only).")
    ] = True,
) -> None:
    """Serve the webhooks and the API (and, by default, answer messages)."""
    import uvicorn

    from platica.app import check_schema, create_app

    settings = _settings()
    try:
        check_schema(settings)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if not worker and settings.is_sqlite:
        typer.echo("Warning: with SQLite and --no-worker, nothing will answer messages.", err=True)
    application = create_app(settings, worker=worker)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"Plática on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    typer.echo(f'Try it: platica simulate --url http://{shown}:{port} --from +15550100001 "Hola"')
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        server_header=False,
    )


@app.command()
def worker() -> None:
    """Answer messages without serving HTTP (PostgreSQL: run as many as you like)."""
    import signal

    from platica.app import check_schema, start_services, stop_services
    from platica.logging import configure_logging

    settings = _settings()
    if settings.is_sqlite:
        typer.echo(
            "Error: with SQLite the worker runs inside `platica serve`; "
            "separate workers need PostgreSQL (DATABASE_URL=postgresql://...).",
            err=True,
        )
        raise typer.Exit(2)
    try:
        check_schema(settings)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    configure_logging(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        state = await start_services(settings, work=True)
        try:
            await stop.wait()
        finally:
            await stop_services(state)

    asyncio.run(run())


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (SQLite or PostgreSQL)."""
    settings = _settings()
    db.upgrade(settings.DATABASE_URL, revision)
    typer.echo(f"Database at {db.current_revision(settings.DATABASE_URL)}")


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    whatsapp_number: Annotated[
        str | None, typer.Option(help="The WhatsApp sender this account owns (E.164).")
    ] = None,
    sms_number: Annotated[
        str | None, typer.Option(help="The SMS number this account owns (E.164).")
    ] = None,
) -> None:
    """Create an account and print its API key (shown this once only)."""
    settings = _settings()
    whatsapp = _e164(whatsapp_number, "--whatsapp-number")
    sms = _e164(sms_number, "--sms-number")
    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1 to 200 characters", param_hint="NAME")
    if settings.is_sqlite:
        db.upgrade(settings.DATABASE_URL)

    async def run() -> tuple[uuid.UUID, str]:
        from sqlalchemy.exc import IntegrityError

        engine = db.create_engine(settings.DATABASE_URL)
        try:
            async with db.transaction(db.create_sessionmaker(engine)) as session:
                account, key = await create_account(
                    session, name.strip(), whatsapp_number=whatsapp, sms_number=sms
                )
                return account.id, key
        except IntegrityError:
            typer.echo("Error: another account already owns one of those numbers.", err=True)
            raise typer.Exit(1) from None
        finally:
            await engine.dispose()

    account_id, key = asyncio.run(run())
    typer.echo(f"Account {name.strip()!r} created: {account_id}")
    typer.echo(f"API key (shown once, store it now): {key}")


@app.command()
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
    settings = _settings()
    sender = _e164(from_, "--from")
    chosen = Channel(channel.value)
    configured = (
        settings.TWILIO_WHATSAPP_NUMBER
        if chosen is Channel.whatsapp
        else settings.TWILIO_PHONE_NUMBER
    )
    recipient = _e164(to, "--to") or configured or DEMO_NUMBERS[chosen]
    prefix = "whatsapp:" if chosen is Channel.whatsapp else ""
    sid = "SM" + uuid.uuid4().hex
    form = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": settings.TWILIO_ACCOUNT_SID or "AC" + "0" * 32,
        "From": f"{prefix}{sender}",
        "To": f"{prefix}{recipient}",
        "Body": text,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    path = f"/webhook/{chosen.value}"
    post_url = url.rstrip("/") + path
    headers = {}
    if settings.TWILIO_AUTH_TOKEN is not None:
        signed = (settings.PUBLIC_BASE_URL + path) if settings.PUBLIC_BASE_URL else post_url
        validator = RequestValidator(settings.TWILIO_AUTH_TOKEN.get_secret_value())
        headers["X-Twilio-Signature"] = validator.compute_signature(signed, form)
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
        outcome = asyncio.run(_wait_for_reply(settings, sid, wait))
        if outcome is None:
            typer.echo(f"No reply within {wait:g} s (is the worker running?).", err=True)
            raise typer.Exit(1)
        typer.echo(outcome)


async def _wait_for_reply(settings: Settings, sid: str, seconds: float) -> str | None:
    """Poll the database until the message is answered (or skipped); what happened, in words."""
    from platica.conversations.service import find_reply

    engine = db.create_engine(settings.DATABASE_URL)
    sessionmaker = db.create_sessionmaker(engine)
    try:
        async with asyncio.timeout(seconds):
            while True:
                async with sessionmaker() as session:
                    reply = await find_reply(session, sid)
                if reply is not None:
                    return reply
                await asyncio.sleep(0.2)
    except TimeoutError:
        return None
    finally:
        await engine.dispose()


def main() -> None:
    app()
