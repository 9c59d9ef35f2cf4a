"""Alembic, driven from Plática: upgrade, the current and the head revision."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from platica.db.engine import sync_url

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    # Config's stdout default is whatever sys.stdout was when alembic was first imported (maybe
    # a stream closed since, e.g. a test runner's); `alembic check` and friends print to it.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` (blocking)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database (blocking)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine as create_sync_engine

    engine = create_sync_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def upgrade_async(url: str) -> None:
    """Run the migrations from async code (Alembic itself is blocking)."""
    await asyncio.to_thread(upgrade, url)
