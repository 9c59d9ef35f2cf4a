"""The `platica` command: serve, worker, db upgrade, accounts (and their keys), simulate, stats,
cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer

from platica import db
from platica.accounts import DEMO_NUMBERS, create_account
from platica.channels.forms import inbound_form, signature
from platica.config import E164, ConfigError, Settings, get_settings, strip_channel_prefix
from platica.conversations.retention import DEFAULT_IDLE_DAYS
from platica.models import Channel

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

app = typer.Typer(
    help="Plática: answers WhatsApp and SMS conversations with an LLM, through Twilio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts and their API keys.", no_args_is_help=True)
keys_app = typer.Typer(help="An account's API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
accounts_app.add_typer(keys_app, name="keys")


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
        bool,
        typer.Option(
            help="Also answer messages: on PostgreSQL in a child process, on SQLite in this one "
            "(--no-worker: API only)."
        ),
    ] = True,
) -> None:
    """Serve the webhooks and the API (and, by default, answer messages).

    On PostgreSQL the worker runs as a supervised child process (`platica worker` at a lower CPU
    priority, restarted if it dies, stopped with the server): replies then use another core and
    yield the CPU to webhook acknowledgements. On SQLite it runs in this process.
    """
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
    child_worker = worker and not settings.is_sqlite
    application = create_app(settings, worker=worker and not child_worker)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if host in ("0.0.0.0", "::") and "*" not in settings.ALLOWED_HOSTS:
        typer.echo(
            f"Requests must name one of these hosts: {', '.join(settings.trusted_hosts)} "
            "(others get 400; add yours to ALLOWED_HOSTS).",
            err=True,
        )
    typer.echo(f"Plática on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    typer.echo(f'Try it: platica simulate --url http://{shown}:{port} --from +15550100001 "Hola"')
    typer.echo(
        f"Dashboard: http://{shown}:{port}/ - log in with an API key "
        "(`platica accounts list`, then `platica accounts keys create ACCOUNT_ID`) "
        "or with PLATICA_ADMIN_TOKEN."
    )

    def run() -> None:
        uvicorn.run(
            application,
            host=host,
            port=port,
            log_config=None,
            proxy_headers=True,
            server_header=False,
        )

    if not child_worker:
        typer.echo("Worker: in this process." if worker else "Worker: none here (--no-worker).")
        run()
        return
    with _child_worker() as pid:
        shown_pid = pid if pid is not None else "not started yet (see the log)"
        typer.echo(f"Worker: child process pid {shown_pid} (lower CPU priority).")
        run()


@contextlib.contextmanager
def _child_worker() -> Iterator[int | None]:
    """`platica worker` as a supervised child process while the block runs; its pid.

    uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again. Left to its default
    action, that would end this process before it could stop the worker (the kernel would then
    kill the worker outright), so here the signal ends the block (exit status 0), and the
    worker is stopped in order: SIGTERM, then SIGKILL after 10 s.
    """
    from platica.supervise import WorkerSupervisor

    def exit_quietly(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    previous = {signum: signal.signal(signum, exit_quietly) for signum in STOP_SIGNALS}
    supervisor = WorkerSupervisor()
    try:
        yield supervisor.start()
    finally:
        # A second signal while the worker stops acts as usual (and the kernel kills the worker).
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        supervisor.stop()


@app.command()
def worker() -> None:
    """Answer messages without serving HTTP (PostgreSQL: run as many as you like)."""
    import signal

    from platica.app import check_schema, settle_garbage_collector, start_services, stop_services
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
        # As `serve` does once started: full collections skip what start-up loaded (they took
        # 150-190 ms each, every few seconds under load).
        settle_garbage_collector()
        try:
            await stop.wait()
        finally:
            await stop_services(state)

    with asyncio.Runner(loop_factory=_fast_event_loop()) as runner:
        runner.run(run())


def _fast_event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (with uvicorn[standard], as `serve` uses it):
    each database round trip and HTTP call costs the worker less CPU than on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


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
            async with db.session(db.create_sessionmaker(engine)) as session:
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


def _migrated_settings() -> Settings:
    """The settings, with the schema checked (SQLite: migrated) as `serve` does."""
    from platica.app import check_schema

    settings = _settings()
    try:
        check_schema(settings)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    return settings


def _with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(session)` in one transaction (committed if it returns) on a short-lived engine."""

    async def run() -> T:
        engine = db.create_engine(settings.DATABASE_URL)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _count(number: int, one: str, many: str | None = None) -> str:
    """`1 day`, `2 days`: a number and its noun, in the right number."""
    return f"{number} {one if number == 1 else (many or one + 's')}"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


@accounts_app.command("list")
def accounts_list() -> None:
    """List the accounts with their ids and numbers."""
    from sqlalchemy import select

    from platica.models import Account, ChannelConfig

    settings = _migrated_settings()

    async def work(session: Any) -> list[tuple[Account, list[ChannelConfig]]]:
        accounts = list(await session.scalars(select(Account).order_by(Account.created_at)))
        configs = list(await session.scalars(select(ChannelConfig)))
        return [(a, [c for c in configs if c.account_id == a.id]) for a in accounts]

    rows = _with_session(settings, work)
    if not rows:
        typer.echo("No accounts yet: `platica serve` creates the default one.")
    for account, configs in rows:
        numbers = ", ".join(f"{c.channel} {c.phone_number}" for c in configs) or "no numbers"
        typer.echo(f"{account.id}  {account.name}  ({numbers})")


@keys_app.command("create")
def keys_create(
    account_id: Annotated[uuid.UUID, typer.Argument(help="The account's id.")],
    name: Annotated[str, typer.Option(help="A label to tell the key apart.")] = "default",
) -> None:
    """Create an API key for an account and print it (shown this once only)."""
    from platica.accounts import create_api_key
    from platica.models import Account

    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1 to 200 characters", param_hint="--name")
    settings = _migrated_settings()

    async def work(session: Any) -> str | None:
        if await session.get(Account, account_id) is None:
            return None
        return await create_api_key(session, account_id, name.strip())

    key = _with_session(settings, work)
    if key is None:
        raise _fail(f"no account {account_id}")
    typer.echo(f"API key {key[:12]} ({name.strip()!r}) created for account {account_id}.")
    typer.echo(f"API key (shown once, store it now): {key}")


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[
        str, typer.Argument(help="The key's first 12 characters (as `keys list` shows them).")
    ],
) -> None:
    """Revoke an API key: it stops working at once."""
    from sqlalchemy import select

    from platica.accounts import hash_api_key
    from platica.models import ApiKey, utcnow

    settings = _migrated_settings()
    given = prefix.strip()

    async def work(session: Any) -> tuple[list[ApiKey], ApiKey | None]:
        # The whole key works too, and names exactly one.
        exact = len(given) > 12
        match = ApiKey.key_hash == hash_api_key(given) if exact else ApiKey.prefix == given
        keys = list(await session.scalars(select(ApiKey).where(match)))
        active = [key for key in keys if key.revoked_at is None]
        if len(active) != 1:
            return keys, None
        active[0].revoked_at = utcnow()
        return keys, active[0]

    keys, revoked = _with_session(settings, work)
    if revoked is not None:
        typer.echo(
            f"API key {revoked.prefix} ({revoked.name!r}) of account {revoked.account_id} revoked."
        )
        return
    if not keys:
        raise _fail(f"no API key starts with {given[:12]!r}")
    if all(key.revoked_at is not None for key in keys):
        typer.echo(f"API key {keys[0].prefix} was already revoked.")
        return
    raise _fail(f"several active keys start with {given[:12]!r}; give the whole key")


@keys_app.command("list")
def keys_list(account_id: Annotated[uuid.UUID, typer.Argument(help="The account's id.")]) -> None:
    """List an account's API keys (their prefixes, never the keys)."""
    from sqlalchemy import select

    from platica.models import ApiKey

    settings = _migrated_settings()

    async def work(session: Any) -> list[ApiKey]:
        query = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id)
        return list(await session.scalars(query))

    keys = _with_session(settings, work)
    if not keys:
        typer.echo(f"Account {account_id} has no API keys.")
        return
    typer.echo(f"{'PREFIX':<14}{'NAME':<22}{'CREATED':<18}{'LAST USED':<18}REVOKED")
    for key in keys:
        typer.echo(
            f"{key.prefix:<14}{key.name[:20]:<22}{_when(key.created_at):<18}"
            f"{_when(key.last_used_at):<18}{_when(key.revoked_at)}"
        )


def _when(moment: Any) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


@accounts_app.command("retention")
def accounts_retention(
    account_id: Annotated[uuid.UUID, typer.Argument(help="The account's id.")],
    days: Annotated[
        str | None, typer.Argument(help="Days to keep messages for, or 'keep' to keep them all.")
    ] = None,
) -> None:
    """Show or set how long an account's messages are kept (`platica cleanup` deletes older)."""
    from platica.models import Account

    retention: int | None = None
    if days is not None and days != "keep":
        if not days.isdigit() or int(days) < 1:
            raise typer.BadParameter("must be a number of days (1 or more) or 'keep'")
        retention = int(days)
    settings = _migrated_settings()

    async def work(session: Any) -> tuple[bool, int | None]:
        account = await session.get(Account, account_id)
        if account is None:
            return False, None
        if days is not None:
            account.retention_days = retention
        return True, account.retention_days

    found, current = _with_session(settings, work)
    if not found:
        raise _fail(f"no account {account_id}")
    kept = (
        "every message is kept"
        if current is None
        else f"messages are kept {_count(current, 'day')}"
    )
    typer.echo(f"Account {account_id}: {kept}.")


STATS_ROWS = (
    ("total_conversations", "Conversations"),
    ("active_conversations", "  active"),
    ("total_messages", "Messages"),
    ("incoming_messages", "  incoming"),
    ("outgoing_messages", "  outgoing"),
    ("avg_response_time_ms", "Average response (ms)"),
    ("active_users_24h", "Active users, 24 h"),
    ("active_users_7d", "Active users, 7 days"),
)


def _figure(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


@app.command()
def stats(
    account_id: Annotated[
        uuid.UUID | None, typer.Option(help="Only this account (default: all accounts).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: {channel: the API's /stats object}.")
    ] = False,
) -> None:
    """Print the conversation and message figures of both channels."""
    from platica.conversations.stats import channel_stats
    from platica.models import Account

    settings = _migrated_settings()

    async def work(session: Any) -> dict[str, dict[str, Any]] | None:
        if account_id is not None and await session.get(Account, account_id) is None:
            return None
        return {
            channel.value: await channel_stats(session, channel, account_id) for channel in Channel
        }

    figures = _with_session(settings, work)
    if figures is None:
        raise _fail(f"no account {account_id}")
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(f"Plática stats, {'account ' + str(account_id) if account_id else 'all accounts'}")
    channels = list(figures)
    typer.echo(f"{'':<24}" + "".join(f"{name:>12}" for name in channels))
    for key, label in STATS_ROWS:
        values = [_figure(figures[c][key]) for c in channels]
        typer.echo(f"{label:<24}" + "".join(f"{value:>12}" for value in values))


@app.command()
def cleanup(
    days: Annotated[
        int, typer.Option(help="Close conversations with no message for this many days.", min=1)
    ] = DEFAULT_IDLE_DAYS,
) -> None:
    """Close idle conversations; delete messages past their account's retention and old
    webhook logs (also run daily by every working process)."""
    from platica.conversations.retention import WEBHOOK_LOG_DAYS, run_cleanup

    settings = _migrated_settings()

    async def run() -> Any:
        engine = db.create_engine(settings.DATABASE_URL)
        try:
            return await run_cleanup(db.create_sessionmaker(engine), idle_days=days)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    if report is None:
        raise _fail("another process is cleaning up right now; try again in a minute")
    typer.echo(
        f"Closed {_count(report.closed_conversations, 'conversation')} with no message for "
        f"{_count(days, 'day')}."
    )
    typer.echo(
        f"Deleted {_count(report.deleted_messages, 'message')} older than their account's "
        "retention (accounts without one keep theirs)."
    )
    typer.echo(
        f"Deleted {_count(report.deleted_webhook_logs, 'webhook log entry', 'webhook log entries')}"
        f" older than {_count(WEBHOOK_LOG_DAYS, 'day')} (or their account's retention, if "
        "shorter)."
    )


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
    try:
        async with asyncio.timeout(seconds):
            while True:
                async with sessionmaker() as session:
                    reply = await find_reply(session, sid)
                if reply is not None:
                    return reply, True
                await asyncio.sleep(0.2)
    except TimeoutError:
        async with sessionmaker() as session:
            return await _why_unanswered(session, sid, seconds), False
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


def main() -> None:
    app()
