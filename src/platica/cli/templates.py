"""`platica templates`: sync the accounts' message templates from Twilio's Content API."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import typer

from platica.cli.common import fail, migrated_settings, with_session
from platica.config import Settings
from platica.errors import PlaticaError

templates_app = typer.Typer(help="Message templates (Twilio's Content API).", no_args_is_help=True)


@templates_app.command("sync")
def templates_sync(
    account: Annotated[
        str | None,
        typer.Option(help="Only this account (its name or id); every account by default."),
    ] = None,
) -> None:
    """Read the templates from Twilio and make each account's synced ones match."""
    from sqlalchemy import select

    from platica.models import Account
    from platica.outreach.content import SyncSummary, apply_templates, fetch_templates

    settings = migrated_settings()
    _quiet_logging(settings)
    try:
        remote = asyncio.run(fetch_templates(settings))
    except PlaticaError as error:
        raise fail(error.message) from None

    async def work(session: Any) -> list[tuple[Account, SyncSummary]] | int:
        query = select(Account).order_by(Account.created_at, Account.name)
        if account is not None:
            try:
                query = query.where(Account.id == uuid.UUID(account))
            except ValueError:
                query = query.where(Account.name == account)
        accounts = list(await session.scalars(query))
        if account is not None and len(accounts) != 1:
            return len(accounts)  # none, or several of that name: sync nothing
        return [(row, await apply_templates(session, row.id, remote)) for row in accounts]

    results = with_session(settings, work)
    if isinstance(results, int):
        if results:
            raise fail(f"{results} accounts are named {account!r}: give the account's id")
        raise fail(f"no account {account!r}")
    if not results:
        typer.echo("No accounts yet: `platica serve` creates the default one.")
    for row, summary in results:
        typer.echo(
            f"{row.name} ({row.id}): added {summary.added}, updated {summary.updated}, "
            f"removed {summary.removed}, total {summary.total}"
        )


def _quiet_logging(settings: Settings) -> None:
    """Log events on stderr only at LOG_LEVEL when it is set, else errors only: the command
    prints its own summary, or its one-line error, which the events would only repeat."""
    from platica.logging import configure_logging

    configure_logging(
        settings if settings.LOG_LEVEL else settings.model_copy(update={"LOG_LEVEL": "ERROR"})
    )
