"""`platica doctor`: the settings, the database, the LLM, Twilio, the numbers' webhooks,
row-level security, the database's connection limits and the clock checked, one line each with
the fix; exit status 1 on a failure."""

from __future__ import annotations

import asyncio
import email.utils
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer

from platica.config import ConfigError, Settings, get_settings, redact_url
from platica.logging import mask_phone
from platica.models import Channel

T = TypeVar("T")

OK, FAILED, SKIPPED = "✓", "✗", "\u2013"  # the last an en dash
# More than this between our clock and Twilio's, and signatures, expiries and the dashboard's
# times start to go wrong.
CLOCK_SKEW_LIMIT_SECONDS = 60.0
DATABASE_TIMEOUT_SECONDS = 15.0
OPENAI_TIMEOUT_SECONDS = 15.0
UPGRADE_HINT = "run `platica db upgrade`"
CONNECT_HINT = "run `platica twilio connect`"


class Report:
    """The checks' lines, printed as they come; whether any failed."""

    def __init__(self) -> None:
        self.failed = False

    def ok(self, what: str) -> None:
        typer.echo(mask_phone(f"{OK} {what}"))

    def fail(self, what: str, problem: str, fix: str, *, mask: bool = True) -> None:
        """`mask=False` only for text that holds no number but examples (the settings' errors
        never repeat a value)."""
        self.failed = True
        line = f"{FAILED} {what}: {problem} — {fix}"
        typer.echo(mask_phone(line) if mask else line)

    def skip(self, what: str, why: str) -> None:
        typer.echo(mask_phone(f"{SKIPPED} {what}: skipped ({why})"))


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """One account's channel as the checks need it."""

    account: str
    channel: Channel
    phone_number: str
    openai_model: str | None


def read_channels(settings: Settings) -> list[ChannelRow]:
    """Every account's channels (the database must be at head)."""
    from sqlalchemy import select

    from platica.cli.common import with_session
    from platica.models import Account, ChannelConfig

    async def work(session: Any) -> list[ChannelRow]:
        rows = await session.execute(
            select(
                Account.name,
                ChannelConfig.channel,
                ChannelConfig.phone_number,
                ChannelConfig.openai_model,
            )
            .join(Account, Account.id == ChannelConfig.account_id)
            .order_by(Account.created_at, Account.name, ChannelConfig.channel)
        )
        return [ChannelRow(row[0], Channel(row[1]), row[2], row[3]) for row in rows]

    return with_session(settings, work)


def configured_numbers(
    settings: Settings, channels: list[ChannelRow], channel: Channel
) -> dict[str, list[str]]:
    """The channel's numbers, each with who configures it: the setting, and the accounts."""
    setting = (
        ("TWILIO_PHONE_NUMBER", settings.TWILIO_PHONE_NUMBER)
        if channel is Channel.sms
        else ("TWILIO_WHATSAPP_NUMBER", settings.TWILIO_WHATSAPP_NUMBER)
    )
    numbers: dict[str, list[str]] = {}
    if setting[1]:
        numbers[setting[1]] = [setting[0]]
    for row in channels:
        if row.channel is channel:
            numbers.setdefault(row.phone_number, []).append(f"account {row.account}")
    return numbers


def quiet_logging(settings: Settings) -> None:
    """Log events on stderr only at LOG_LEVEL when it is set, else errors only: the command's
    lines say it all."""
    from platica.logging import configure_logging

    configure_logging(
        settings if settings.LOG_LEVEL else settings.model_copy(update={"LOG_LEVEL": "ERROR"})
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# -- the database ---------------------------------------------------------------------------------


def check_database(report: Report, settings: Settings) -> list[ChannelRow] | None:
    """Reachable, then at head; the accounts' channels when both hold (None otherwise)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from platica import db

    shown = redact_url(settings.DATABASE_URL)
    if settings.is_sqlite:
        path = make_url(db.sync_url(settings.DATABASE_URL)).database
        if path and path != ":memory:" and not Path(path).exists():
            report.fail(
                "database",
                f"{path} does not exist",
                f"{UPGRADE_HINT} (`make run` and `platica serve` create it too)",
            )
            return None
    try:
        asyncio.run(_ping(settings.DATABASE_URL))
    except (SQLAlchemyError, OSError, TimeoutError) as error:
        report.fail(
            "database",
            f"cannot connect to {shown} ({first_line(error)})",
            "check DATABASE_URL and that the server is running",
        )
        return None
    report.ok(f"database reachable ({shown})")
    try:
        current = db.current_revision(settings.DATABASE_URL)
    except SQLAlchemyError as error:
        report.fail("database schema", first_line(error), UPGRADE_HINT)
        return None
    head = db.head_revision()
    if current != head:
        report.fail(
            "database schema",
            f"at revision {current or 'none (no tables)'}, not {head}",
            UPGRADE_HINT,
        )
        return None
    report.ok(f"database schema at head ({head})")
    try:
        return read_channels(settings)
    except (SQLAlchemyError, OSError) as error:
        report.fail(
            "accounts' channels",
            f"cannot be read ({first_line(error)})",
            "check that DATABASE_URL's role may read channel_configs",
        )
        return None


async def _ping(url: str) -> None:
    from sqlalchemy import text

    from platica import db

    engine = db.create_engine(url)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def _on_postgresql(report: Report, settings: Settings, what: str, at_head: bool, why: str) -> bool:
    """Whether a PostgreSQL check can run: skipped, with `why`, on SQLite, and on a database
    not reachable or not migrated."""
    if settings.is_sqlite:
        report.skip(what, why)
        return False
    if not at_head:
        report.skip(what, "the database is not reachable or not migrated")
        return False
    return True


def check_row_level_security(report: Report, settings: Settings, at_head: bool) -> None:
    """PostgreSQL: every table of Plática's has row-level security on and a policy."""
    what = "row-level security"
    if not _on_postgresql(
        report, settings, what, at_head, "SQLite has none; it is a PostgreSQL feature"
    ):
        return
    from sqlalchemy import text

    from platica.cli.common import with_session
    from platica.db import Base

    tables = sorted(name for name in Base.metadata.tables if name != "alembic_version")

    async def work(session: Any) -> list[str]:
        rows = await session.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                " AND c.relrowsecurity"
                " AND EXISTS (SELECT 1 FROM pg_policies p"
                "  WHERE p.schemaname = n.nspname AND p.tablename = c.relname)"
            )
        )
        protected = {row[0] for row in rows}
        return [table for table in tables if table not in protected]

    missing = with_session(settings, work)
    if missing:
        report.fail(
            what,
            f"off for {', '.join(missing)}",
            f"{UPGRADE_HINT} as the tables' owner",
        )
    else:
        report.ok(f"{what} on every table ({len(tables)})")


# What PostgreSQL reports of the connection limits that apply to DATABASE_URL's role and database,
# with the connections other clients hold under each (this one and Plática's own left out).
_CONNECTION_LIMITS = """
SELECT current_setting('max_connections')::int
         - CASE WHEN r.rolsuper THEN 0
                ELSE current_setting('superuser_reserved_connections')::int END AS server,
       count(*) FILTER (WHERE a.pid IS NOT NULL) AS server_used,
       r.rolconnlimit AS role,
       count(*) FILTER (WHERE a.usename = current_user) AS role_used,
       d.datconnlimit AS database,
       count(*) FILTER (WHERE a.datname = current_database()) AS database_used
FROM pg_roles r
JOIN pg_database d ON d.datname = current_database()
LEFT JOIN pg_stat_activity a
       ON a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
      AND a.application_name IS DISTINCT FROM :ours
WHERE r.rolname = current_user
GROUP BY r.rolsuper, r.rolconnlimit, d.datconnlimit
"""


def check_connections(report: Report, settings: Settings, at_head: bool) -> None:
    """PostgreSQL: room under every limit that applies (the server's max_connections, the role's
    and the database's CONNECTION LIMIT) for what one `platica serve` and its worker hold at
    most, besides the connections of other clients."""
    what = "database connections"
    if not _on_postgresql(
        report, settings, what, at_head, "SQLite has no connection limit; it is a PostgreSQL one"
    ):
        return
    from sqlalchemy import text

    from platica import db
    from platica.cli.common import with_session

    async def work(session: Any) -> Any:
        result = await session.execute(text(_CONNECTION_LIMITS), {"ours": db.APPLICATION_NAME})
        return result.one()

    row = with_session(settings, work)
    limits = [
        (row.server, row.server_used, "the server's max_connections", "max_connections"),
        (row.role, row.role_used, "the role's CONNECTION LIMIT", "it"),
        (row.database, row.database_used, "the database's CONNECTION LIMIT", "it"),
    ]
    free, limit, used, name, setting = min(
        (limit - used, limit, used, name, setting)
        for limit, used, name, setting in limits
        if limit >= 0  # -1: no limit
    )
    size = settings.DATABASE_POOL_SIZE
    needed = db.connections_at_most(size)
    held = f"one `platica serve` and its worker hold up to {needed} (DATABASE_POOL_SIZE={size})"
    room = f"{name} is {limit}, {used} held by other clients"
    if needed <= free:
        report.ok(f"{what}: {held}; {room}")
        return
    fit = db.pool_size_within(free)
    if fit >= 1:
        at_most = db.connections_at_most(fit)
        fix = f"set DATABASE_POOL_SIZE={fit} ({at_most} at most) or raise {setting}"
    elif used:
        fix = f"close other clients' connections or raise {setting}"
    else:
        fix = f"raise {setting}"
    report.fail(what, f"{held}, more than the {max(free, 0)} left: {room}", fix)


# -- the LLM --------------------------------------------------------------------------------------


def check_llm(report: Report, settings: Settings, channels: list[ChannelRow] | None) -> None:
    """The LLM answers `models.list()`, and lists every model the configuration names."""
    if settings.OPENAI_API_KEY is None and settings.OPENAI_BASE_URL is None:
        reason = "no OPENAI_API_KEY or OPENAI_BASE_URL: the offline responder answers"
        report.skip("LLM", reason)
        return
    import openai

    where = redact_url(settings.OPENAI_BASE_URL) if settings.OPENAI_BASE_URL else "OpenAI"
    key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None
    client = openai.OpenAI(
        # Local servers accept any key, but the SDK insists on one.
        api_key=key or "unused",
        base_url=settings.OPENAI_BASE_URL,
        timeout=OPENAI_TIMEOUT_SECONDS,
        max_retries=1,
    )
    try:
        listed = {model.id for model in client.models.list()}
    except openai.AuthenticationError:
        report.fail(
            "LLM",
            "OPENAI_API_KEY was refused (401)",
            "set OPENAI_API_KEY to a valid key (platform.openai.com → API keys)",
        )
        return
    except openai.NotFoundError:
        report.ok(f"LLM answers ({where})")
        report.skip("models", f"{where} does not list its models (404)")
        return
    except openai.APIStatusError as error:
        report.fail(
            "LLM",
            f"{where} answered {error.status_code} to GET /models",
            "check OPENAI_BASE_URL, and the provider's status page",
        )
        return
    except openai.APIConnectionError as error:
        report.fail(
            "LLM",
            f"cannot reach {where} ({type(error).__name__})",
            "check OPENAI_BASE_URL and the network",
        )
        return
    finally:
        client.close()
    report.ok(f"LLM answers ({where}, {len(listed)} models listed)")
    for model, users in _models_in_use(settings, channels).items():
        named = f"model {model} ({', '.join(users)})"
        if model in listed:
            report.ok(named)
        else:
            report.fail(named, f"not listed by {where}", _model_fix(users))


def _models_in_use(settings: Settings, channels: list[ChannelRow] | None) -> dict[str, list[str]]:
    """Each model the configuration names, with what names it. TRANSCRIPTION_MODEL when media
    is on: Twilio's media fetched (credentials set) and an LLM to transcribe voice notes."""
    models: dict[str, list[str]] = {settings.OPENAI_MODEL: ["OPENAI_MODEL"]}
    for row in channels or []:
        if row.openai_model:
            models.setdefault(row.openai_model, []).append(
                f"account {row.account}, {row.channel.value}"
            )
    if settings.twilio_configured:
        models.setdefault(settings.TRANSCRIPTION_MODEL, []).append("TRANSCRIPTION_MODEL")
    return models


def _model_fix(users: list[str]) -> str:
    names = [user for user in users if not user.startswith("account ")]
    fixes = [f"set {name} to a model the server lists" for name in names]
    if len(names) < len(users):
        fixes.append("change the channel's model in the dashboard's settings")
    return "; ".join(fixes)


# -- Twilio ---------------------------------------------------------------------------------------


def check_twilio(report: Report, settings: Settings, channels: list[ChannelRow] | None) -> None:
    """The credentials (an account fetch), the clock (its Date), then every number's webhooks."""
    if not settings.twilio_configured:
        why = "TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset: replies are stored, not sent"
        report.skip("Twilio", why)
        report.skip("clock", "it is compared with Twilio's, which is not configured")
        return
    from platica.channels.numbers import blocking_client

    client = blocking_client(settings)
    if not _check_account(report, settings, client):
        report.skip("numbers", "Twilio's credentials do not work")
        return
    if not settings.PUBLIC_BASE_URL:
        report.fail(
            "PUBLIC_BASE_URL",
            "unset, so the numbers' webhooks cannot be checked",
            "set it to the public URL Twilio calls (e.g. https://abc123.ngrok-free.app)",
        )
        return
    if channels is None:
        channels = []
        note = "the database cannot be read: only TWILIO_PHONE_NUMBER/TWILIO_WHATSAPP_NUMBER"
        report.skip("accounts' numbers", note)
    _check_sms_numbers(
        report, settings, client, configured_numbers(settings, channels, Channel.sms)
    )
    _check_whatsapp_numbers(
        report, settings, client, configured_numbers(settings, channels, Channel.whatsapp)
    )


def _check_account(report: Report, settings: Settings, client: Any) -> bool:
    from twilio.base.exceptions import TwilioException, TwilioRestException

    sid = settings.TWILIO_ACCOUNT_SID or ""
    shown = f"{sid[:6]}…{sid[-4:]}"
    try:
        sent = datetime.now(UTC)
        response = client.api.v2010.accounts(sid).fetch_with_http_info()
        received = datetime.now(UTC)
    except TwilioRestException as error:
        if error.status == 401:
            report.fail(
                "Twilio credentials",
                f"TWILIO_AUTH_TOKEN was refused (401, code {error.code})",
                f"copy the Auth Token of {shown} from the Twilio Console (Account Info), "
                "or fix TWILIO_ACCOUNT_SID",
            )
        else:
            report.fail(
                "Twilio credentials",
                f"Twilio answered {error.status} (code {error.code}) for account {shown}",
                "check TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_API_BASE_URL",
            )
        report.skip("clock", "Twilio did not answer")
        return False
    except (TwilioException, OSError) as error:
        report.fail(
            "Twilio credentials",
            f"cannot reach {settings.TWILIO_API_BASE_URL} ({type(error).__name__})",
            "check TWILIO_API_BASE_URL and the network",
        )
        report.skip("clock", "Twilio did not answer")
        return False
    account = response.data
    if account.status not in (None, "active"):
        report.fail(
            "Twilio account",
            f"{shown} is {account.status}",
            "reactivate it in the Twilio Console (Billing), or use another account",
        )
    else:
        report.ok(f"Twilio credentials (account {shown}, {account.type or 'type unknown'})")
    _check_clock(report, _header(response.headers, "Date"), sent, received)
    return True


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def clock_skew(date_header: str, sent: datetime, received: datetime) -> float:
    """Seconds our clock is ahead of the server's (negative: behind), from its `Date` header
    (whole seconds) and when we sent and got the answer."""
    theirs = email.utils.parsedate_to_datetime(date_header)
    ours = sent + (received - sent) / 2
    return (ours - theirs).total_seconds()


def _check_clock(
    report: Report, date_header: str | None, sent: datetime, received: datetime
) -> None:
    if date_header is None:
        report.skip("clock", "Twilio's answer had no Date header")
        return
    try:
        skew = clock_skew(date_header, sent, received)
    except (TypeError, ValueError):
        report.skip("clock", "Twilio's Date header could not be read")
        return
    if abs(skew) > CLOCK_SKEW_LIMIT_SECONDS:
        direction = "ahead of" if skew > 0 else "behind"
        report.fail(
            "clock",
            f"this machine is {abs(skew):.0f} s {direction} Twilio's clock",
            "synchronise it (NTP: `timedatectl set-ntp true`)",
        )
    else:
        report.ok(f"clock within {max(abs(skew), 1):.0f} s of Twilio's")


def _twilio_calls(
    report: Report, what: str, call: Callable[[], T], fix: str
) -> tuple[bool, T | None]:
    """(True, the result), or (False, None) with the failure reported."""
    from twilio.base.exceptions import TwilioException, TwilioRestException

    from platica.outreach.content import answered_status

    try:
        return True, call()
    except (TwilioException, OSError) as error:
        # A list's failed page is a bare TwilioException carrying the response.
        status = answered_status(error)
        if isinstance(error, TwilioRestException):
            report.fail(what, f"Twilio answered {status} (code {error.code})", fix)
        elif status is not None:
            report.fail(what, f"Twilio answered {status}", fix)
        else:
            report.fail(what, f"Twilio could not be asked ({type(error).__name__})", fix)
    return False, None


def _check_sms_numbers(
    report: Report, settings: Settings, client: Any, numbers: dict[str, list[str]]
) -> None:
    from platica.channels.numbers import find_number

    if not numbers:
        report.skip("SMS numbers", "none: TWILIO_PHONE_NUMBER unset and no account has one")
        return
    base = settings.PUBLIC_BASE_URL or ""  # set: check_twilio made sure
    for number, users in numbers.items():
        what = f"SMS number {number} ({', '.join(users)})"
        done, hooks = _twilio_calls(
            report,
            what,
            functools.partial(find_number, client, number),
            "check the Twilio Console, then run `platica doctor` again",
        )
        if not done:
            continue
        if hooks is None:
            report.fail(
                what,
                "not on the Twilio account",
                "buy or port it (Twilio Console → Phone Numbers), or correct the number "
                "(TWILIO_PHONE_NUMBER, `platica accounts set-number`)",
            )
            continue
        _report_changes(report, what, hooks.changes(base))


def _report_changes(report: Report, what: str, changes: list[Any]) -> None:
    wrong = [change for change in changes if change.needed]
    if not wrong:
        report.ok(f"{what}: webhooks point at PUBLIC_BASE_URL")
        return
    problems = "; ".join(
        f"{change.field} is {change.before or '(unset)'}, not {change.after or '(unset)'}"
        for change in wrong
    )
    report.fail(what, problems, CONNECT_HINT)


def _check_whatsapp_numbers(
    report: Report, settings: Settings, client: Any, numbers: dict[str, list[str]]
) -> None:
    from platica.channels.numbers import find_sender, sandbox_steps

    if not numbers:
        report.skip("WhatsApp numbers", "none: TWILIO_WHATSAPP_NUMBER unset and no account has one")
        return
    base = settings.PUBLIC_BASE_URL or ""
    for number, users in numbers.items():
        what = f"WhatsApp number {number} ({', '.join(users)})"
        done, hooks = _twilio_calls(
            report,
            what,
            functools.partial(find_sender, client, number),
            "check the sender in the Twilio Console (Messaging → Senders → WhatsApp senders)",
        )
        if not done:
            continue
        if hooks is None:
            report.skip(
                what,
                "not a sender of the Senders API: the Sandbox, or a sender of another account; "
                f"check its webhook in the Console: {sandbox_steps(base)}",
            )
            continue
        if hooks.status and hooks.status.upper() != "ONLINE":
            report.fail(
                what,
                f"the sender is {hooks.status}",
                "see its status in the Twilio Console (Messaging → Senders → WhatsApp senders)",
            )
            continue
        _report_changes(report, what, hooks.changes(base))


# -- the command ----------------------------------------------------------------------------------


def _settings_or_report(report: Report) -> Settings | None:
    try:
        return get_settings()
    except ConfigError as error:
        for line in str(error).splitlines():
            report.fail(
                "settings",
                line.removeprefix("Invalid configuration: "),
                "fix it in the environment or .env (see .env.example)",
                mask=False,
            )
        return None


def doctor() -> None:
    """Check the setup end to end: settings, database, LLM and models, Twilio credentials,
    every number's webhooks, row-level security, connection limits, the clock. Exit status 1
    if any check fails."""
    report = Report()
    settings = _settings_or_report(report)
    if settings is None:
        raise typer.Exit(1)
    quiet_logging(settings)
    report.ok("settings")
    channels = check_database(report, settings)
    check_llm(report, settings, channels)
    check_twilio(report, settings, channels)
    check_row_level_security(report, settings, channels is not None)
    check_connections(report, settings, channels is not None)
    raise typer.Exit(1 if report.failed else 0)
