"""`platica accounts`: create and list accounts, their API keys and their retention."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

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
) -> None:
    """Create an account and print its API key (shown this once only)."""
    settings = load_settings()
    whatsapp = parse_e164(whatsapp_number, "--whatsapp-number")
    sms = parse_e164(sms_number, "--sms-number")
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
    settings = migrated_settings()

    async def work(session: Any) -> str | None:
        if await session.get(Account, account_id) is None:
            return None
        return await create_api_key(session, account_id, name.strip())

    key = with_session(settings, work)
    if key is None:
        raise fail(f"no account {account_id}")
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
def keys_list(account_id: Annotated[uuid.UUID, typer.Argument(help="The account's id.")]) -> None:
    """List an account's API keys (their prefixes, never the keys)."""
    from sqlalchemy import select

    from platica.models import ApiKey

    settings = migrated_settings()

    async def work(session: Any) -> list[ApiKey]:
        query = select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id)
        return list(await session.scalars(query))

    keys = with_session(settings, work)
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
    settings = migrated_settings()

    async def work(session: Any) -> tuple[bool, int | None]:
        account = await session.get(Account, account_id)
        if account is None:
            return False, None
        if days is not None:
            account.retention_days = retention
        return True, account.retention_days

    found, current = with_session(settings, work)
    if not found:
        raise fail(f"no account {account_id}")
    kept = (
        "every message is kept" if current is None else f"messages are kept {count(current, 'day')}"
    )
    typer.echo(f"Account {account_id}: {kept}.")


# -- link-user: a Supabase user acts as an account ------------------------------------------------


async def _find_account(session: Any, given: str) -> Any:
    """The account named by `given`: its id, or else its exact name; a message if none or many."""
    from sqlalchemy import select

    from platica.models import Account

    try:
        account = await session.get(Account, uuid.UUID(given))
    except ValueError:
        named = list(await session.scalars(select(Account).where(Account.name == given)))
        if len(named) > 1:
            return f"several accounts are named {given!r}; give the id (`platica accounts list`)"
        account = named[0] if named else None
    if account is None:
        return f"no account {given!r} (`platica accounts list` shows their ids and names)"
    return account


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

    from platica.models import Account

    try:
        user = uuid.UUID(user_id.strip())
    except ValueError:
        raise typer.BadParameter(
            f"must be a Supabase user id (a UUID like 0b8c7f2e-5d1a-4c3b-9e6f-2a1d4b7c8e90), "
            f"got {user_id!r}",
            param_hint="USER_ID",
        ) from None
    settings = migrated_settings()

    async def work(session: Any) -> tuple[str, Any]:
        found = await _find_account(session, account.strip())
        if isinstance(found, str):
            return "error", found
        if found.auth_user_id == user:
            return "already", found
        other = await session.scalar(select(Account).where(Account.auth_user_id == user))
        if not force and other is not None:
            return "error", (
                f"Supabase user {user} is already linked to account {other.id} "
                f"({other.name}); add --force to move it to {found.id}"
            )
        if not force and found.auth_user_id is not None:
            return "error", (
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

    outcome, detail = with_session(settings, work)
    if outcome == "error":
        raise fail(detail)
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
