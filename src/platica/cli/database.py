"""`platica db upgrade` and `platica cleanup`: the schema, and what is kept in it."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from platica import db
from platica.cli.common import count, fail, load_settings, migrated_settings
from platica.conversations.retention import DEFAULT_IDLE_DAYS

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (SQLite or PostgreSQL)."""
    settings = load_settings()
    db.upgrade(settings.DATABASE_URL, revision)
    typer.echo(f"Database at {db.current_revision(settings.DATABASE_URL)}")


def cleanup(
    days: Annotated[
        int, typer.Option(help="Close conversations with no message for this many days.", min=1)
    ] = DEFAULT_IDLE_DAYS,
) -> None:
    """Close idle conversations; delete messages past their account's retention and old
    webhook logs (also run daily by every working process)."""
    from platica.conversations.retention import WEBHOOK_LOG_DAYS, run_cleanup

    settings = migrated_settings()

    async def run() -> Any:
        engine = db.create_engine(settings.DATABASE_URL)
        try:
            return await run_cleanup(db.create_sessionmaker(engine), idle_days=days)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    if report is None:
        raise fail("another process is cleaning up right now; try again in a minute")
    typer.echo(
        f"Closed {count(report.closed_conversations, 'conversation')} with no message for "
        f"{count(days, 'day')}."
    )
    typer.echo(
        f"Deleted {count(report.deleted_messages, 'message')} older than their account's "
        "retention (accounts without one keep theirs)."
    )
    entries = count(report.deleted_webhook_logs, "webhook log entry", "webhook log entries")
    typer.echo(
        f"Deleted {entries} older than {count(WEBHOOK_LOG_DAYS, 'day')} (or their account's "
        "retention, if shorter)."
    )
