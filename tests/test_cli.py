"""The `platica` command: db upgrade, accounts create, simulate."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from platica import db
from platica.cli import app
from platica.config import Settings, get_settings
from tests.conftest import Database, LiveServer, free_port, make_settings
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, WHATSAPP_NUMBER
from tests.fakes import FakeTwilio
from tests.throwaway import throwaway_database

LiveServerFactory = Callable[[Settings], LiveServer]


def invoke(*args: str) -> Result:
    """Run `platica ARGS` in-process, reading the settings afresh from the environment."""
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


def printed(result: Result, label: str) -> str:
    """The value printed after `label` on stdout."""
    [line] = [line for line in result.stdout.splitlines() if line.startswith(label)]
    return line.split(": ", 1)[1]


@pytest.fixture
def scratch_postgres(postgres_url: str) -> Iterator[str]:
    with throwaway_database(postgres_url) as url:
        yield url


class TestDbUpgrade:
    def test_sqlite_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
        monkeypatch.setenv("DATABASE_URL", url)

        result = invoke("db", "upgrade")

        assert result.exit_code == 0, result.output
        assert result.stdout == f"Database at {db.head_revision()}\n"
        assert db.current_revision(url) == db.head_revision()

    def test_sqlite_twice(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/fresh.db")
        assert invoke("db", "upgrade").exit_code == 0

        result = invoke("db", "upgrade")

        assert result.exit_code == 0, result.output
        assert result.stdout == f"Database at {db.head_revision()}\n"

    @pytest.mark.postgres
    def test_postgresql(self, scratch_postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", scratch_postgres)
        assert db.current_revision(scratch_postgres) is None

        result = invoke("db", "upgrade")

        assert result.exit_code == 0, result.output
        assert result.stdout == f"Database at {db.head_revision()}\n"
        assert db.current_revision(scratch_postgres) == db.head_revision()

    def test_bad_database_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "mysql://db/app")

        result = invoke("db", "upgrade")

        assert result.exit_code == 2
        assert result.stderr.startswith("Invalid configuration: DATABASE_URL: ")


class TestAccountsCreate:
    def test_prints_key_once_and_stores_its_hash(
        self, use_database: str, database: Database
    ) -> None:
        result = invoke(
            "accounts",
            "create",
            "Acme",
            "--sms-number",
            "+15550001111",
            "--whatsapp-number",
            "+15550002222",
        )

        assert result.exit_code == 0, result.output
        key = printed(result, "API key")
        assert key.startswith("plk_")
        assert len(key) > 40
        assert result.stdout.count(key) == 1
        [row] = database.rows("SELECT * FROM api_keys")
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert all(key not in str(value) for value in row)

    def test_creates_channel_configs(self, use_database: str, database: Database) -> None:
        result = invoke(
            "accounts",
            "create",
            "Acme",
            "--sms-number",
            "+15550001111",
            "--whatsapp-number",
            "whatsapp:+15550002222",
        )

        assert result.exit_code == 0, result.output
        account_id = uuid.UUID(printed(result, "Account 'Acme' created"))
        [account] = database.rows("SELECT id, name FROM accounts")
        assert (uuid.UUID(str(account.id)), account.name) == (account_id, "Acme")
        configs = database.rows("SELECT account_id, channel, phone_number FROM channel_configs")
        assert sorted(
            (uuid.UUID(str(c.account_id)), c.channel, c.phone_number) for c in configs
        ) == [
            (account_id, "sms", "+15550001111"),
            (account_id, "whatsapp", "+15550002222"),
        ]

    def test_number_already_owned(self, use_database: str, database: Database) -> None:
        assert invoke("accounts", "create", "Acme", "--sms-number", "+15550001111").exit_code == 0

        result = invoke(
            "accounts",
            "create",
            "Other",
            "--whatsapp-number",
            "+15550003333",
            "--sms-number",
            "+15550001111",
        )

        assert result.exit_code == 1
        assert "sms number +15550001111 already belongs to account 'Acme' (" in result.stderr
        assert "Traceback" not in result.output
        assert [row.name for row in database.rows("SELECT name FROM accounts")] == ["Acme"]
        assert database.count("api_keys") == 1
        assert database.count("channel_configs") == 1

    def test_same_number_on_other_channel(self, use_database: str, database: Database) -> None:
        assert invoke("accounts", "create", "Acme", "--sms-number", "+15550001111").exit_code == 0

        result = invoke("accounts", "create", "Other", "--whatsapp-number", "+15550001111")

        assert result.exit_code == 0, result.output
        assert database.count("accounts") == 2

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("--sms-number", "12345"),
            ("--sms-number", "+1 555 000 1111"),
            ("--whatsapp-number", "whatsapp:5550002222"),
        ],
    )
    def test_invalid_number(
        self, option: str, value: str, use_database: str, database: Database
    ) -> None:
        result = invoke("accounts", "create", "Acme", option, value)

        assert result.exit_code == 2
        assert f"Invalid value for {option}: must be an E.164 number" in result.stderr
        assert database.count("accounts") == 0


class TestAccountsLanguage:
    """The customers' language, given at creation (Spanish unless told): the channels' built-in
    texts and default prompt are in it, and a channel added later speaks it too."""

    def languages(self, database: Database) -> dict[str, str]:
        rows = database.rows("SELECT channel, language FROM channel_configs")
        return {row.channel: row.language for row in rows}

    def test_spanish_unless_told(self, use_database: str, database: Database) -> None:
        result = invoke("accounts", "create", "Panadería Sol", "--sms-number", "+34911222334")

        assert result.exit_code == 0, result.output
        assert self.languages(database) == {"sms": "es"}

    def test_english_for_every_channel_and_one_added_later(
        self, use_database: str, database: Database
    ) -> None:
        created = invoke(
            "accounts", "create", "Sunny Bakery", "--sms-number", "+15550001111", "--language", "en"
        )
        added = invoke("accounts", "set-number", "Sunny Bakery", "--whatsapp", "+15550002222")

        assert created.exit_code == 0, created.output
        assert added.exit_code == 0, added.output
        assert self.languages(database) == {"sms": "en", "whatsapp": "en"}

    def test_a_language_without_built_in_texts_is_refused(
        self, use_database: str, database: Database
    ) -> None:
        result = invoke("accounts", "create", "Boulangerie", "--language", "fr")

        assert result.exit_code == 2
        assert "Invalid value for --language: must be one of es, en" in result.stderr
        assert database.count("accounts") == 0


class TestSimulate:
    @pytest.fixture
    def twilio(self) -> Iterator[FakeTwilio]:
        with FakeTwilio() as fake:
            yield fake

    @pytest.fixture
    def server(
        self,
        database_url: str,
        database: Database,
        live_server: LiveServerFactory,
        twilio: FakeTwilio,
        monkeypatch: pytest.MonkeyPatch,
    ) -> LiveServer:
        """A server with Twilio configured (signatures checked, replies to the fake Twilio),
        the offline responder, and no debounce; the CLI reads the same settings from the
        environment."""
        server = live_server(make_settings(database_url, TWILIO_API_BASE_URL=twilio.url))
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        monkeypatch.setenv("PUBLIC_BASE_URL", server.url)
        monkeypatch.setenv("TWILIO_PHONE_NUMBER", SMS_NUMBER)
        monkeypatch.setenv("TWILIO_WHATSAPP_NUMBER", f"whatsapp:{WHATSAPP_NUMBER}")
        return server

    @pytest.mark.parametrize(
        ("channel", "recipient"), [("sms", SMS_NUMBER), ("whatsapp", WHATSAPP_NUMBER)]
    )
    def test_accepted_stored_and_reply_printed(
        self,
        channel: str,
        recipient: str,
        server: LiveServer,
        database: Database,
        twilio: FakeTwilio,
    ) -> None:
        result = invoke(
            "simulate",
            "--url",
            server.url,
            "--channel",
            channel,
            "--from",
            "+34600111222",
            "--wait",
            "15",
            "¿Abren?",
        )

        assert result.exit_code == 0, result.output
        accepted, reply = result.stdout.splitlines()
        assert accepted.startswith("Accepted: SM")
        assert accepted.endswith(f"from +34600111222 to {recipient} on {channel}.")
        sid = accepted.split()[1]
        rows = database.rows(
            "SELECT channel, direction, body FROM messages WHERE twilio_sid = :sid", sid=sid
        )
        assert [tuple(row) for row in rows] == [(channel, "inbound", "¿Abren?")]
        assert reply.startswith("Reply (")
        assert 'Dijiste: "¿Abren?"' in reply
        [sent] = twilio.sent
        prefix = "whatsapp:" if channel == "whatsapp" else ""
        assert (sent["to"], sent["from"]) == (f"{prefix}+34600111222", f"{prefix}{recipient}")

    def test_without_waiting(self, server: LiveServer, database: Database) -> None:
        result = invoke("simulate", "--url", server.url, "--wait", "0", "Hola")

        assert result.exit_code == 0, result.output
        [accepted] = result.stdout.splitlines()
        sid = accepted.split()[1]
        assert database.scalar("SELECT body FROM messages WHERE twilio_sid = :sid", sid=sid) == (
            "Hola"
        )

    def test_a_keyword_reply_is_shown_as_the_answer_it_is(
        self, server: LiveServer, database: Database
    ) -> None:
        """Issue 12's defect 6: WhatsApp HELP showed "Not answered: keyword: help" right above
        the help message that was sent."""
        database.execute(
            "UPDATE channel_configs SET help_message = 'Escribe tu pregunta; STOP para salir.'"
        )
        result = invoke(
            "simulate", "--url", server.url, "--channel", "whatsapp", "--wait", "15", "HELP"
        )

        assert result.exit_code == 0, result.output
        reply = result.stdout.splitlines()[1]
        assert reply.startswith("Reply (")
        assert reply.endswith("Escribe tu pregunta; STOP para salir.")
        assert "Not answered" not in result.stdout

    def test_wrong_auth_token_refused(
        self, server: LiveServer, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", "f" * 32)

        result = invoke("simulate", "--url", server.url, "Hola")

        assert result.exit_code == 1
        assert result.stderr.startswith("Error: Plática answered 403")
        assert database.count("messages") == 0

    def test_number_nobody_owns(self, server: LiveServer, database: Database) -> None:
        result = invoke("simulate", "--url", server.url, "--to", "+15550009999", "Hola")

        assert result.exit_code == 1
        assert result.stderr.startswith("Error: Plática answered 404")
        assert database.count("messages") == 0

    def test_nothing_listening(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"

        result = invoke("simulate", "--url", url, "--wait", "0", "Hola")

        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: could not reach Plática at {url}")
        assert "Traceback" not in result.output

    def test_a_send_that_keeps_failing_is_reported_as_such(
        self, server: LiveServer, twilio: FakeTwilio
    ) -> None:
        """Item 9 of issue 12: not "(is the worker running?)" when the worker ran and Twilio
        refused: what is stored about the failure is printed."""
        twilio.fail_always("500")

        result = invoke("simulate", "--url", server.url, "--wait", "8", "Hola")

        assert result.exit_code == 1
        assert "worker" not in result.stderr
        assert "not sent" in result.stderr
        assert "Twilio answered 500" in result.stderr  # the failure stored on the reply
        assert "Traceback" not in result.output

    def test_invalid_sender(self) -> None:
        result = invoke("simulate", "--from", "0034600111222", "Hola")

        assert result.exit_code == 2
        assert "Invalid value for --from" in result.stderr


class TestSimulateElsewhere:
    """Item 8 of issue 12: run outside the server's folder, `simulate` read ./platica.db (which
    is not the server's database), printed a 200-line traceback and left a stray file."""

    @pytest.fixture
    def server(
        self,
        sqlite_url: str,
        live_server: LiveServerFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> LiveServer:
        """A local-mode server (no Twilio) on its database; `simulate` runs in another folder."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        return live_server(
            make_settings(sqlite_url, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)
        )

    @pytest.fixture
    def server_database(self, sqlite_url: str) -> Iterator[Database]:
        handle = Database(sqlite_url)
        yield handle
        handle.engine.dispose()

    def test_the_default_database_missing_here_is_one_line_and_creates_nothing(
        self, server: LiveServer, server_database: Database
    ) -> None:
        result = invoke("simulate", "--url", server.url, "Hola")

        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        assert "./platica.db" in line
        assert "does not exist" in line
        assert "DATABASE_URL" in line
        assert "--wait 0" in line
        assert not Path("platica.db").exists()
        assert server_database.count("messages") == 0  # nothing posted either

    def test_a_database_without_platicas_tables_is_one_line_and_left_alone(
        self, server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        other = tmp_path / "elsewhere" / "other.db"
        other.write_bytes(b"")
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{other}")

        result = invoke("simulate", "--url", server.url, "Hola")

        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        assert str(other) in line
        assert "not Plática's database" in line
        assert other.read_bytes() == b""

    @pytest.mark.postgres
    def test_an_unreachable_database_is_one_line(
        self, server: LiveServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(
            "DATABASE_URL", f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/x"
        )

        result = invoke("simulate", "--url", server.url, "Hola")

        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        assert "could not connect" in line
        assert "hunter2" not in line

    def test_without_waiting_no_database_is_needed(
        self, server: LiveServer, server_database: Database
    ) -> None:
        result = invoke("simulate", "--url", server.url, "--wait", "0", "Hola")

        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Accepted: SM")
        assert not Path("platica.db").exists()
        assert server_database.count("messages") == 1


class TestAccountsList:
    def test_lists_ids_names_and_numbers(self, use_database: str) -> None:
        created = invoke("accounts", "create", "Panadería Sol", "--sms-number", "+34911222334")
        assert created.exit_code == 0, created.output
        listed = invoke("accounts", "list")

        assert listed.exit_code == 0, listed.output
        [line] = [line for line in listed.stdout.splitlines() if "Panadería Sol" in line]
        assert "sms +34911222334" in line
        assert uuid.UUID(line.split()[0])

    def test_empty(self, use_database: str) -> None:
        listed = invoke("accounts", "list")
        assert listed.exit_code == 0
        assert "No accounts yet" in listed.stdout
