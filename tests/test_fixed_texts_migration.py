"""Revision 0011 on SQLite and PostgreSQL: the texts nobody edited follow the channel's language
(NULL), edited ones stay, and a downgrade writes back what the customers were getting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from platica import db
from platica.models import Channel
from platica.texts import TextName, built_in
from tests.records import account_row, config_rows
from tests.throwaway import throwaway_database

OLD_HELP = "This is an automated assistant. Reply STOP to stop receiving messages."
OLD_FALLBACK = "Sorry, we can't answer right now. We'll get back to you soon."
EDITED_HELP = "Escribe tu pedido; STOP para salir."
TEXTS: tuple[TextName, ...] = ("system_prompt", "fallback_message", "help_message", "busy_message")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/texts.db"
        return
    with throwaway_database(request.getfixturevalue("postgres_url")) as made:
        yield made


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    created = sa.create_engine(db.sync_url(url))
    yield created
    created.dispose()


def texts_of(engine: sa.Engine, channel: str) -> dict[str, str | None]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(f"SELECT {', '.join(TEXTS)} FROM channel_configs WHERE channel = :channel"),
            {"channel": channel},
        ).one()
    return dict(zip(TEXTS, row, strict=True))


class TestFixedTextsMigration:
    def test_old_defaults_become_the_languages_built_in_edited_texts_stay(self, url, engine):
        db.upgrade(url)
        account = account_row()
        with Session(engine) as session, session.begin():
            session.add(account)
            session.flush()
            session.add_all(config_rows(account, {Channel.sms: "+15005550006"}, language="es"))
            session.add_all(
                config_rows(
                    account,
                    {Channel.whatsapp: "+14155238886"},
                    language="en",
                    help_message=EDITED_HELP,
                )
            )

        command.downgrade(db.alembic_config(url), "0010")

        # What the customers were getting, written back in each channel's language.
        assert texts_of(engine, "sms") == {name: built_in("es", name) for name in TEXTS}
        assert texts_of(engine, "whatsapp") == {
            **{name: built_in("en", name) for name in TEXTS},
            "help_message": EDITED_HELP,
        }
        with engine.begin() as connection:
            # An account from before: the English defaults the models used to write, a blank.
            connection.execute(
                sa.text(
                    "UPDATE channel_configs SET help_message = :help, fallback_message = :fallback,"
                    " busy_message = '  ' WHERE channel = 'sms'"
                ),
                {"help": OLD_HELP, "fallback": OLD_FALLBACK},
            )

        db.upgrade(url)

        assert texts_of(engine, "sms") == dict.fromkeys(TEXTS)
        assert texts_of(engine, "whatsapp") == {**dict.fromkeys(TEXTS), "help_message": EDITED_HELP}
        with engine.connect() as connection:
            new = connection.execute(
                sa.text("SELECT opt_out_message, handoff_message FROM channel_configs")
            ).all()
        assert [tuple(row) for row in new] == [(None, None), (None, None)]
