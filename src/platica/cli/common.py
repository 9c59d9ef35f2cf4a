"""What the `platica` commands share: the settings (or a one-line error), E.164 options, one
transaction on a short-lived engine, and counted nouns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from platica import db
from platica.config import E164, ConfigError, Settings, get_settings, strip_channel_prefix

T = TypeVar("T")


def load_settings() -> Settings:
    """The settings; on a configuration error, its one line on stderr and exit status 2."""
    try:
        return get_settings()
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def check_schema_or_exit(settings: Settings) -> None:
    """The schema checked (SQLite: migrated) as `serve` does; exit status 2 with the one-line
    reason when it is not Plática's at head."""
    from platica.app import check_schema

    try:
        check_schema(settings)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def migrated_settings() -> Settings:
    """The settings, with the schema checked (SQLite: migrated) as `serve` does."""
    settings = load_settings()
    check_schema_or_exit(settings)
    return settings


def parse_e164(value: str | None, option: str) -> str | None:
    """An E.164 number given to `option` ("whatsapp:" prefix allowed), or BadParameter."""
    if value is None:
        return None
    number = strip_channel_prefix(value.strip())
    if not E164.match(number):
        raise typer.BadParameter(
            f"must be an E.164 number like +14155550100, got {value!r}", param_hint=option
        )
    return number


def with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(session)` in one transaction (committed if it returns) on a short-lived engine."""

    async def run() -> T:
        engine = db.create_engine(settings.DATABASE_URL)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def count(number: int, one: str, many: str | None = None) -> str:
    """`1 day`, `2 days`: a number and its noun, in the right number."""
    return f"{number} {one if number == 1 else (many or one + 's')}"


def fail(message: str) -> typer.Exit:
    """`Error: message` on stderr; the exit (status 1) for the caller to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)
