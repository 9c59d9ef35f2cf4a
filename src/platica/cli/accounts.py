"""`platica accounts`: create and list accounts, their API keys and their retention."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from platica import db
from platica.accounts import create_account
from platica.cli.common import (
    count,
    fail,
    load_settings,
    migrated_settings,
    parse_e164,
    with_session,
)
from platica.config import Settings
from platica.errors import Conflict, PlaticaError
from platica.models import Account, Channel
from platica.texts import DEFAULT_LANGUAGE, LANGUAGES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from platica.accounts import AccountData

accounts_app = typer.Typer(help="Accounts and their API keys.", no_args_is_help=True)
keys_app = typer.Typer(help="An account's API keys.", no_args_is_help=True)
accounts_app.add_typer(keys_app, name="keys")


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    whatsapp_number: Annotated[
        str | None, typer.Option(help="The WhatsApp sender this account owns (E.164).")
    ] = None,
    sms_number: Annotated[
        str | None, typer.Option(help="The SMS number this account owns (E.164).")
    ] = None,
    language: Annotated[
        str,
        typer.Option(
            help="The customers' language, es or en: the fixed texts' and the default prompt's."
        ),
    ] = DEFAULT_LANGUAGE,
) -> None:
    """Create an account and print its API key (shown this once only)."""
    settings = load_settings()
    whatsapp = parse_e164(whatsapp_number, "--whatsapp-number")
    sms = parse_e164(sms_number, "--sms-number")
    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1 to 200 characters", param_hint="NAME")
    if language not in LANGUAGES:
        raise typer.BadParameter(f"must be one of {', '.join(LANGUAGES)}", param_hint="--language")
    if settings.is_sqlite:
        db.upgrade(settings.DATABASE_URL)

    async def run() -> tuple[uuid.UUID, str]:
        from sqlalchemy.exc import IntegrityError

        from platica.accounts import check_number_free

        engine = db.create_engine(settings.DATABASE_URL)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
                # A number another account owns: refused, saying whose.
                for channel, number in ((Channel.whatsapp, whatsapp), (Channel.sms, sms)):
                    if number is not None:
                        await check_number_free(session, channel, number)
                account, key = await create_account(
                    session,
                    name.strip(),
                    whatsapp_number=whatsapp,
                    sms_number=sms,
                    language=language,
                )
                return account.id, key
        except PlaticaError as error:
            raise fail(error.message) from None
        except IntegrityError:
            typer.echo("Error: another account already owns one of those numbers.", err=True)
            raise typer.Exit(1) from None
        finally:
            await engine.dispose()

    account_id, key = asyncio.run(run())
    typer.echo(f"Account {name.strip()!r} created: {account_id}")
    typer.echo(f"API key (shown once, store it now): {key}")


@accounts_app.command("list")
def accounts_list() -> None:
    """List the accounts with their ids and numbers."""
    from sqlalchemy import select

    from platica.models import Account, ChannelConfig

    settings = migrated_settings()

    async def work(session: Any) -> list[tuple[Account, list[ChannelConfig]]]:
        accounts = list(await session.scalars(select(Account).order_by(Account.created_at)))
        configs = list(await session.scalars(select(ChannelConfig)))
        return [(a, [c for c in configs if c.account_id == a.id]) for a in accounts]

    rows = with_session(settings, work)
    if not rows:
        typer.echo("No accounts yet: `platica serve` creates the default one.")
    for account, configs in rows:
        numbers = ", ".join(f"{c.channel} {c.phone_number}" for c in configs) or "no numbers"
        typer.echo(f"{account.id}  {account.name}  ({numbers})")


# -- managing an account: ACCOUNT is its id or its name ------------------------------------------

T = TypeVar("T")
CHANNEL_LABELS = {"whatsapp": "WhatsApp", "sms": "SMS"}
AccountArgument = Annotated[str, typer.Argument(help="The account's id or its name.")]


def on_account(
    settings: Settings, ref: str, work: Callable[[AsyncSession, Account], Awaitable[T]]
) -> T:
    """`work(session, account)` in one transaction, the account found by id or name; a refusal
    (no such account, a number taken…) is `Error: …` and exit status 1, nothing changed."""
    from platica.accounts import find_account
    from platica.logging import configure_logging

    # Events on stderr, masked, at LOG_LEVEL when set, else errors only: the command prints
    # what it did.
    configure_logging(
        settings if settings.LOG_LEVEL else settings.model_copy(update={"LOG_LEVEL": "ERROR"})
    )

    async def run(session: AsyncSession) -> T:
        return await work(session, await find_account(session, ref))

    try:
        return with_session(settings, run)
    except PlaticaError as error:
        raise fail(error.message) from None


def _describe(account: Account, numbers: dict[Channel, str]) -> str:
    owned = ", ".join(
        f"{CHANNEL_LABELS[channel.value]} {number}" for channel, number in sorted(numbers.items())
    )
    return f"{account.name!r} ({account.id}; {owned or 'no numbers'})"


@accounts_app.command("set-number")
def accounts_set_number(
    account: AccountArgument,
    whatsapp: Annotated[
        str | None, typer.Option("--whatsapp", help="The WhatsApp sender to own (E.164).")
    ] = None,
    sms: Annotated[str | None, typer.Option("--sms", help="The SMS number to own (E.164).")] = None,
    remove: Annotated[
        list[Channel] | None,
        typer.Option(
            "--remove",
            help="Remove the channel (whatsapp or sms) and its settings from the account; "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """Add or change the account's WhatsApp or SMS number, or remove a channel (--remove).

    A number belongs to one account per channel. The numbers TWILIO_PHONE_NUMBER and
    TWILIO_WHATSAPP_NUMBER give the default account stay with it: change those variables.
    """
    from platica.accounts import account_numbers, set_number

    wanted: dict[Channel, str | None] = {}
    for channel, value, option in (
        (Channel.whatsapp, whatsapp, "--whatsapp"),
        (Channel.sms, sms, "--sms"),
    ):
        number = parse_e164(value, option)
        if number is not None:
            wanted[channel] = number
    for channel in remove or []:
        if channel in wanted:
            raise typer.BadParameter(
                f"{channel.value} is both given a number and removed", param_hint="--remove"
            )
        wanted[channel] = None
    if not wanted:
        raise typer.BadParameter("give --whatsapp +E164, --sms +E164 or --remove CHANNEL")
    settings = migrated_settings()

    async def work(
        session: AsyncSession, found: Account
    ) -> tuple[Account, dict[Channel, str], dict[Channel, str]]:
        before = await account_numbers(session, found.id)
        for channel, number in wanted.items():
            await set_number(session, found, channel, number, settings)
        return found, before, await account_numbers(session, found.id)

    found, before, after = on_account(settings, account, work)
    for channel in wanted:
        label = CHANNEL_LABELS[channel.value]
        old, new = before.get(channel), after.get(channel)
        if old == new:
            typer.echo(f"{label}: {new or 'none'}, unchanged.")
        elif new is None:
            typer.echo(f"{label}: {old} removed, with the channel's settings.")
        else:
            typer.echo(f"{label}: {new}" + (f" (was {old})." if old else " (new channel)."))
    typer.echo(f"Account {_describe(found, after)}.")


@accounts_app.command("rename")
def accounts_rename(
    account: AccountArgument,
    name: Annotated[str, typer.Argument(help="The new name (1 to 200 characters).")],
) -> None:
    """Rename an account (no two accounts share a name)."""
    from platica.accounts import rename_account

    settings = migrated_settings()

    async def work(session: AsyncSession, found: Account) -> tuple[uuid.UUID, str, bool]:
        old = found.name
        changed = await rename_account(session, found, name)
        return found.id, old, changed

    account_id, old, changed = on_account(settings, account, work)
    if changed:
        typer.echo(f"Account {account_id} renamed from {old!r} to {name.strip()!r}.")
    else:
        typer.echo(f"Account {account_id} is already named {old!r}.")


@accounts_app.command("delete")
def accounts_delete(
    account: AccountArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete an account with all its data: conversations, messages, contacts, media, API keys,
    templates, broadcasts and webhook log. Shows what will go and asks first (--yes skips).

    The account owning the numbers TWILIO_PHONE_NUMBER / TWILIO_WHATSAPP_NUMBER give (the
    default account) is refused: the next start would give them to a new empty account.
    """
    from platica.accounts import (
        account_numbers,
        check_deletable,
        count_account_data,
        delete_account,
    )

    settings = migrated_settings()

    async def preview(
        session: AsyncSession, found: Account
    ) -> tuple[Account, dict[Channel, str], AccountData]:
        numbers = await account_numbers(session, found.id)
        check_deletable(settings, found, numbers)
        return found, numbers, await count_account_data(session, found.id)

    found, numbers, data = on_account(settings, account, preview)
    typer.echo(f"Account {_describe(found, numbers)} holds {_counted(data)}.")
    if not yes:
        try:
            confirmed = typer.confirm("Delete it and all its data, for good?", default=False)
        except typer.Abort:
            confirmed = False
        if not confirmed:
            raise fail("not confirmed: nothing deleted (--yes deletes without asking)")

    async def remove(session: AsyncSession, again: Account) -> AccountData:
        return await delete_account(session, again, settings)

    deleted = on_account(settings, str(found.id), remove)
    typer.echo(f"Account {found.name!r} ({found.id}) deleted with {_counted(deleted)}.")


def _counted(data: AccountData) -> str:
    return ", ".join(
        count(getattr(data, name), noun, plural)
        for name, noun, plural in (
            ("conversations", "conversation", None),
            ("messages", "message", None),
            ("contacts", "contact", None),
            ("media", "media item", None),
            ("api_keys", "API key", None),
            ("templates", "template", None),
            ("broadcasts", "broadcast", None),
            ("webhook_logs", "webhook log entry", "webhook log entries"),
        )
    )


@keys_app.command("create")
def keys_create(
    account: AccountArgument,
    name: Annotated[str, typer.Option(help="A label to tell the key apart.")] = "default",
) -> None:
    """Create an API key for an account and print it (shown this once only)."""
    from platica.accounts import create_api_key

    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1 to 200 characters", param_hint="--name")
    settings = migrated_settings()

    async def work(session: AsyncSession, found: Account) -> tuple[uuid.UUID, str]:
        return found.id, await create_api_key(session, found.id, name.strip())

    account_id, key = on_account(settings, account, work)
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

    settings = migrated_settings()
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

    keys, revoked = with_session(settings, work)
    if revoked is not None:
        typer.echo(
            f"API key {revoked.prefix} ({revoked.name!r}) of account {revoked.account_id} revoked."
        )
        return
    if not keys:
        raise fail(f"no API key starts with {given[:12]!r}")
    if all(key.revoked_at is not None for key in keys):
        typer.echo(f"API key {keys[0].prefix} was already revoked.")
        return
    raise fail(f"several active keys start with {given[:12]!r}; give the whole key")


@keys_app.command("list")
def keys_list(account: AccountArgument) -> None:
    """List an account's API keys (their prefixes, never the keys)."""
    from sqlalchemy import select

    from platica.models import ApiKey

    settings = migrated_settings()

    async def work(session: AsyncSession, found: Account) -> tuple[uuid.UUID, list[ApiKey]]:
        query = select(ApiKey).where(ApiKey.account_id == found.id).order_by(ApiKey.id)
        return found.id, list(await session.scalars(query))

    account_id, keys = on_account(settings, account, work)
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
    account: AccountArgument,
    days: Annotated[
        str | None, typer.Argument(help="Days to keep messages for, or 'keep' to keep them all.")
    ] = None,
) -> None:
    """Show or set how long an account's messages are kept (`platica cleanup` deletes older)."""
    retention: int | None = None
    if days is not None and days != "keep":
        if not days.isdigit() or int(days) < 1:
            raise typer.BadParameter("must be a number of days (1 or more) or 'keep'")
        retention = int(days)
    settings = migrated_settings()

    async def work(session: AsyncSession, found: Account) -> tuple[uuid.UUID, int | None]:
        if days is not None:
            found.retention_days = retention
        return found.id, found.retention_days

    account_id, current = on_account(settings, account, work)
    kept = (
        "every message is kept" if current is None else f"messages are kept {count(current, 'day')}"
    )
    typer.echo(f"Account {account_id}: {kept}.")


# -- link-user: a Supabase user acts as an account ------------------------------------------------


@accounts_app.command("link-user")
def accounts_link_user(
    account: Annotated[str, typer.Argument(help="The account's id (or its exact name).")],
    user_id: Annotated[
        str,
        typer.Argument(
            help="The Supabase user's id: a UUID, shown in Supabase under Authentication → "
            "Users, and the `sub` of the user's JWTs."
        ),
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the account's current user, or move the user from another account.",
        ),
    ] = False,
) -> None:
    """Let a Supabase user call the API as ACCOUNT: their JWTs (`sub` = USER_ID) are accepted."""
    from sqlalchemy import select

    try:
        user = uuid.UUID(user_id.strip())
    except ValueError:
        raise typer.BadParameter(
            f"must be a Supabase user id (a UUID like 0b8c7f2e-5d1a-4c3b-9e6f-2a1d4b7c8e90), "
            f"got {user_id!r}",
            param_hint="USER_ID",
        ) from None
    settings = migrated_settings()

    async def work(session: AsyncSession, found: Account) -> tuple[str, Any]:
        if found.auth_user_id == user:
            return "already", found
        other = await session.scalar(select(Account).where(Account.auth_user_id == user))
        if not force and other is not None:
            raise Conflict(
                f"Supabase user {user} is already linked to account {other.id} "
                f"({other.name}); add --force to move it to {found.id}"
            )
        if not force and found.auth_user_id is not None:
            raise Conflict(
                f"account {found.id} ({found.name}) is already linked to Supabase user "
                f"{found.auth_user_id}; add --force to replace it"
            )
        if other is not None:
            other.auth_user_id = None
            await session.flush()  # first: the column is unique
        previous = found.auth_user_id
        found.auth_user_id = user
        await session.flush()
        return "linked", (found, previous, other)

    outcome, detail = on_account(settings, account, work)
    if outcome == "already":
        typer.echo(
            f"Supabase user {user} is already linked to account {detail.id} ({detail.name})."
        )
        return
    found, previous, other = detail
    if other is not None:
        typer.echo(f"Supabase user {user} unlinked from account {other.id} ({other.name}).")
    if previous is not None:
        typer.echo(f"Account {found.id} ({found.name}): Supabase user {previous} unlinked.")
    typer.echo(
        f"Supabase user {user} linked to account {found.id} ({found.name}): "
        "their JWTs now call the API as this account."
    )
