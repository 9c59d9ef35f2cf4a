"""`platica templates sync`: every account (or the one named) synced from the fake Twilio's
Content API, on SQLite and PostgreSQL; one clear line and a failing exit when it cannot be."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from platica.cli import app
from platica.config import get_settings
from tests.conftest import Database
from tests.factories import ACCOUNT_SID, AUTH_TOKEN
from tests.fakes import FakeTwilio
from tests.records import add_account, in_session

PEDIDO = "Hola {{1}}, su pedido {{2}} está listo para recoger."
CITA = "Buenos días {{1}}, le recordamos su cita del {{2}}."


def invoke(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def fake(use_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTwilio]:
    """The fake Twilio, and the environment of a `platica` command pointed at it."""
    with FakeTwilio() as server:
        for name, value in {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": "https://platica.example.com",
            "TWILIO_API_BASE_URL": server.url,
            "TWILIO_CONTENT_BASE_URL": server.url,
        }.items():
            monkeypatch.setenv(name, value)
        yield server


def accounts(database_url: str, *names: str) -> list[uuid.UUID]:
    async def create(session: AsyncSession) -> list[uuid.UUID]:
        return [(await add_account(session, name)).id for name in names]

    return in_session(database_url, create)


class TestTemplatesSync:
    def test_every_account(self, use_database: str, fake: FakeTwilio) -> None:
        panaderia, farmacia = accounts(use_database, "Panadería", "Farmacia")
        fake.add_content("pedido_listo", PEDIDO)
        gone = fake.add_content("recordatorio_cita", CITA, approval="pending")
        assert invoke("templates", "sync").exit_code == 0
        fake.remove_content(gone)
        fake.add_content("encuesta", "¿Qué tal le atendimos, {{1}}?")

        result = invoke("templates", "sync")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [
            f"Panadería ({panaderia}): added 1, updated 0, removed 1, total 2",
            f"Farmacia ({farmacia}): added 1, updated 0, removed 1, total 2",
        ]
        database = Database(use_database)
        try:
            assert database.count("templates") == 4
        finally:
            database.engine.dispose()

    @pytest.mark.parametrize("how", ["name", "id"])
    def test_one_account(self, use_database: str, fake: FakeTwilio, how: str) -> None:
        panaderia, farmacia = accounts(use_database, "Panadería", "Farmacia")
        fake.add_content("pedido_listo", PEDIDO)

        result = invoke(
            "templates", "sync", "--account", "Farmacia" if how == "name" else str(farmacia)
        )

        assert result.exit_code == 0, result.output
        assert result.stdout == f"Farmacia ({farmacia}): added 1, updated 0, removed 0, total 1\n"
        database = Database(use_database)
        try:
            rows = database.rows("SELECT account_id FROM templates")
        finally:
            database.engine.dispose()
        assert [str(row.account_id).replace("-", "") for row in rows] == [farmacia.hex]
        assert panaderia != farmacia

    def test_unknown_account(self, use_database: str, fake: FakeTwilio) -> None:
        accounts(use_database, "Panadería")
        fake.add_content("pedido_listo", PEDIDO)

        result = invoke("templates", "sync", "--account", "Ferretería")

        assert result.exit_code == 1
        assert result.stderr == "Error: no account 'Ferretería'\n"

    def test_twilio_not_configured(
        self, use_database: str, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        accounts(use_database, "Panadería")
        monkeypatch.delenv("TWILIO_ACCOUNT_SID")
        monkeypatch.delenv("TWILIO_AUTH_TOKEN")

        result = invoke("templates", "sync")

        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: Twilio is not configured: set TWILIO_ACCOUNT_SID")
        assert result.stdout == ""
        assert fake.request_log == []

    def test_twilio_refuses(self, use_database: str, fake: FakeTwilio) -> None:
        accounts(use_database, "Panadería")
        fake.auth_token = "f" * 32

        result = invoke("templates", "sync")

        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line == (
            "Error: Twilio refused the credentials (401): check TWILIO_ACCOUNT_SID and "
            "TWILIO_AUTH_TOKEN"
        )
        assert AUTH_TOKEN not in result.output
