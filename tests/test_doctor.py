"""`platica doctor`: the real command against FakeOpenAI and FakeTwilio over HTTP. A good setup is
all ✓ (exit 0); each deliberate fault gives exactly its ✗ (exit 1)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from platica import db
from platica.cli import app
from platica.cli.doctor import SKIPPED, Report, check_connections, clock_skew
from platica.config import get_settings
from platica.models import Channel
from tests.conftest import make_settings, sqlite_only
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, WHATSAPP_NUMBER
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.records import add_account, in_session
from tests.throwaway import throwaway_database

PUBLIC = "https://platica.example.com"
OPENAI_KEY = "sk-proj-doctor-3b1f9a7c5d2e8f40"
OTHER_SMS_NUMBER = "+15005550010"


@dataclass
class Setup:
    openai: FakeOpenAI
    twilio: FakeTwilio
    monkeypatch: pytest.MonkeyPatch

    def connect_numbers(self) -> None:
        """The configured SMS number and WhatsApp sender on the account, pointing at PUBLIC."""
        self.twilio.add_number(
            SMS_NUMBER, sms_url=PUBLIC + "/webhook/sms", status_callback=PUBLIC + "/webhook/status"
        )
        self.twilio.add_sender(
            WHATSAPP_NUMBER,
            callback_url=PUBLIC + "/webhook/whatsapp",
            status_callback_url=PUBLIC + "/webhook/status",
        )

    def set(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)


@pytest.fixture
def setup(use_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """A good configuration: the LLM and Twilio (fakes) answer, the database is at head."""
    with FakeOpenAI(api_key=OPENAI_KEY) as openai_fake, FakeTwilio() as twilio_fake:
        for name, value in {
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": openai_fake.url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_PHONE_NUMBER": SMS_NUMBER,
            "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER,
            "TWILIO_API_BASE_URL": twilio_fake.url,
            "TWILIO_MESSAGING_BASE_URL": twilio_fake.url,
            "PUBLIC_BASE_URL": PUBLIC,
        }.items():
            monkeypatch.setenv(name, value)
        yield Setup(openai_fake, twilio_fake, monkeypatch)


def run_doctor() -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, ["doctor"])


def lines(result: Result, mark: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(mark)]


def failures(result: Result) -> list[str]:
    return lines(result, "✗")


class TestGoodSetup:
    def test_every_check_passes(self, setup: Setup, database_url: str) -> None:
        setup.connect_numbers()

        result = run_doctor()

        assert result.exit_code == 0, result.output
        assert failures(result) == []
        passed = "\n".join(lines(result, "✓"))
        for what in (
            "✓ settings",
            "✓ database reachable",
            "✓ database schema at head",
            "✓ LLM answers",
            "✓ model gpt-4o-mini (OPENAI_MODEL)",
            "✓ model gpt-4o-mini-transcribe (TRANSCRIPTION_MODEL)",
            "✓ Twilio credentials",
            "✓ clock within",
            "✓ SMS number +1500*****06 (TWILIO_PHONE_NUMBER): webhooks point at PUBLIC_BASE_URL",
            "✓ WhatsApp number +1415*****86 (TWILIO_WHATSAPP_NUMBER): webhooks point at",
        ):
            assert what in passed, result.output
        skipped = lines(result, SKIPPED)
        if database_url.startswith("postgresql"):
            assert "✓ row-level security on every table" in passed
            assert "✓ database connections: one `platica serve` and its worker hold up to" in passed
            assert skipped == []
        else:
            assert skipped == [
                f"{SKIPPED} row-level security: skipped (SQLite has none; it is a PostgreSQL feature)",
                f"{SKIPPED} database connections: skipped (SQLite has no connection limit; it is a"
                " PostgreSQL one)",
            ]

    @sqlite_only
    def test_never_prints_a_secret_or_a_whole_number(self, setup: Setup) -> None:
        setup.connect_numbers()

        result = run_doctor()

        for secret in (OPENAI_KEY, AUTH_TOKEN, ACCOUNT_SID, SMS_NUMBER, WHATSAPP_NUMBER):
            assert secret not in result.output

    @sqlite_only
    def test_accounts_numbers_and_models_are_checked(self, setup: Setup, database_url: str) -> None:
        setup.connect_numbers()
        setup.twilio.add_number(
            OTHER_SMS_NUMBER,
            sms_url=PUBLIC + "/webhook/sms",
            status_callback=PUBLIC + "/webhook/status",
        )
        in_session(
            database_url,
            lambda session: add_account(
                session,
                "Panadería",
                numbers={Channel.sms: OTHER_SMS_NUMBER},
                config={"openai_model": "gpt-4o"},
            ),
        )

        result = run_doctor()

        assert result.exit_code == 0, result.output
        assert "✓ SMS number +1500*****10 (account Panadería): webhooks point at" in result.stdout
        assert "✓ model gpt-4o (account Panadería, sms)" in result.stdout

    @sqlite_only
    def test_without_an_llm_or_twilio_those_checks_are_skipped(self, setup: Setup) -> None:
        for name in (
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
        ):
            setup.monkeypatch.delenv(name)

        result = run_doctor()

        assert result.exit_code == 0, result.output
        assert failures(result) == []
        skipped = "\n".join(lines(result, SKIPPED))
        assert f"{SKIPPED} LLM: skipped (no OPENAI_API_KEY or OPENAI_BASE_URL" in skipped
        assert f"{SKIPPED} Twilio: skipped (TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset" in skipped
        assert setup.twilio.request_log == []


@sqlite_only
class TestFaults:
    def test_bad_openai_key(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.set("OPENAI_API_KEY", "sk-proj-wrong-9f8e7d6c5b4a3210")

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            "✗ LLM: OPENAI_API_KEY was refused (401) — set OPENAI_API_KEY to a valid key "
            "(platform.openai.com → API keys)"
        ]

    def test_a_model_the_llm_does_not_list(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.set("OPENAI_MODEL", "gpt-9-imaginary")

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith("✗ model gpt-9-imaginary (OPENAI_MODEL): not listed by")
        assert failure.endswith("— set OPENAI_MODEL to a model the server lists")

    def test_bad_twilio_token(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.set("TWILIO_AUTH_TOKEN", "fedcba9876543210fedcba9876543210")

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith(
            "✗ Twilio credentials: TWILIO_AUTH_TOKEN was refused (401, code 20003) — "
        )
        assert "fedcba98" not in result.output

    def test_a_number_not_on_the_account(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.set("TWILIO_PHONE_NUMBER", OTHER_SMS_NUMBER)

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith(
            "✗ SMS number +1500*****10 (TWILIO_PHONE_NUMBER): not on the Twilio account — "
        )

    def test_an_sms_webhook_pointing_elsewhere(self, setup: Setup) -> None:
        setup.twilio.add_number(
            SMS_NUMBER,
            sms_url="https://old-host.example.com/sms",
            status_callback=PUBLIC + "/webhook/status",
        )
        setup.twilio.add_sender(
            WHATSAPP_NUMBER,
            callback_url=PUBLIC + "/webhook/whatsapp",
            status_callback_url=PUBLIC + "/webhook/status",
        )

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            "✗ SMS number +1500*****06 (TWILIO_PHONE_NUMBER): SmsUrl is "
            "https://old-host.example.com/sms, not https://platica.example.com/webhook/sms "
            "— run `platica twilio connect`"
        ]

    def test_a_whatsapp_sender_pointing_elsewhere(self, setup: Setup) -> None:
        setup.twilio.add_number(
            SMS_NUMBER, sms_url=PUBLIC + "/webhook/sms", status_callback=PUBLIC + "/webhook/status"
        )
        setup.twilio.add_sender(WHATSAPP_NUMBER, callback_url="https://old-host.example.com/wa")

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith("✗ WhatsApp number +1415*****86 (TWILIO_WHATSAPP_NUMBER): ")
        assert "callback_url is https://old-host.example.com/wa" in failure
        assert "status_callback_url is (unset)" in failure

    def test_a_whatsapp_sender_offline(self, setup: Setup) -> None:
        setup.twilio.add_number(
            SMS_NUMBER, sms_url=PUBLIC + "/webhook/sms", status_callback=PUBLIC + "/webhook/status"
        )
        setup.twilio.add_sender(
            WHATSAPP_NUMBER,
            callback_url=PUBLIC + "/webhook/whatsapp",
            status_callback_url=PUBLIC + "/webhook/status",
            status="OFFLINE",
        )

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith(
            "✗ WhatsApp number +1415*****86 (TWILIO_WHATSAPP_NUMBER): the sender is OFFLINE — "
        )

    def test_a_whatsapp_number_that_is_no_sender_is_skipped_with_the_console_steps(
        self, setup: Setup
    ) -> None:
        setup.twilio.add_number(
            SMS_NUMBER, sms_url=PUBLIC + "/webhook/sms", status_callback=PUBLIC + "/webhook/status"
        )

        result = run_doctor()

        assert result.exit_code == 0, result.output
        [skipped] = [line for line in lines(result, SKIPPED) if "WhatsApp" in line]
        assert "Sandbox settings" in skipped
        assert PUBLIC + "/webhook/whatsapp" in skipped

    def test_unmigrated_sqlite_database(self, setup: Setup, tmp_path: Path) -> None:
        setup.connect_numbers()
        empty = tmp_path / "empty.db"
        sqlite3.connect(empty).close()
        setup.set("DATABASE_URL", f"sqlite+aiosqlite:///{empty}")

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            "✗ database schema: at revision none (no tables), not "
            f"{head()} — run `platica db upgrade`"
        ]

    def test_database_not_reachable(self, setup: Setup) -> None:
        setup.connect_numbers()
        # Nothing listens on the discard port.
        setup.set("DATABASE_URL", "postgresql://platica:s3cr3t-pw@127.0.0.1:9/platica")

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith(
            "✗ database: cannot connect to postgresql://platica:***@127.0.0.1:9/platica ("
        )
        assert failure.endswith("— check DATABASE_URL and that the server is running")
        assert "s3cr3t-pw" not in result.output
        # The settings' numbers are still checked; the accounts' cannot be.
        assert "✓ SMS number +1500*****06 (TWILIO_PHONE_NUMBER)" in result.stdout

    def test_twilio_not_reachable(self, setup: Setup) -> None:
        setup.set("TWILIO_API_BASE_URL", "http://127.0.0.1:9")

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            "✗ Twilio credentials: cannot reach http://127.0.0.1:9 (ConnectionError) — "
            "check TWILIO_API_BASE_URL and the network"
        ]

    def test_llm_not_reachable(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.set("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            "✗ LLM: cannot reach http://127.0.0.1:9/v1 (APIConnectionError) — "
            "check OPENAI_BASE_URL and the network"
        ]

    def test_a_clock_off_by_more_than_a_minute(self, setup: Setup) -> None:
        setup.connect_numbers()
        setup.twilio.clock_offset = -300  # Twilio's clock: ours is 5 minutes ahead

        result = run_doctor()

        assert result.exit_code == 1
        [failure] = failures(result)
        assert failure.startswith("✗ clock: this machine is 30")
        assert failure.endswith(
            " s ahead of Twilio's clock — synchronise it (NTP: `timedatectl set-ntp true`)"
        )

    def test_no_sqlite_file_yet(self, setup: Setup, tmp_path: Path) -> None:
        setup.connect_numbers()
        missing = tmp_path / "none-yet.db"
        setup.set("DATABASE_URL", f"sqlite+aiosqlite:///{missing}")

        result = run_doctor()

        assert result.exit_code == 1
        assert failures(result) == [
            f"✗ database: {missing} does not exist — run `platica db upgrade` "
            "(`make run` and `platica serve` create it too)"
        ]
        assert not missing.exists()

    def test_invalid_settings_stop_the_checks(self, setup: Setup) -> None:
        setup.set("TWILIO_PHONE_NUMBER", "555-0100")

        result = run_doctor()

        assert result.exit_code == 1
        assert result.stdout.splitlines() == [
            "✗ settings: TWILIO_PHONE_NUMBER: must be an E.164 number like +14155550100 — "
            "fix it in the environment or .env (see .env.example)"
        ]
        assert setup.twilio.request_log == []


@pytest.mark.postgres
def test_unmigrated_postgresql_database(setup: Setup, postgres_url: str) -> None:
    setup.connect_numbers()
    with throwaway_database(postgres_url) as url:
        setup.set("DATABASE_URL", url)

        result = run_doctor()

    assert result.exit_code == 1
    assert failures(result) == [
        f"✗ database schema: at revision none (no tables), not {head()} — run `platica db upgrade`"
    ]
    assert (
        f"{SKIPPED} row-level security: skipped (the database is not reachable or not migrated)"
        in (result.stdout)
    )


@pytest.mark.postgres
class TestConnectionLimits:
    """The pools of one `platica serve` and its worker (4 x DATABASE_POOL_SIZE + 1 connections at
    most) checked against the limits the database applies, here a role's CONNECTION LIMIT."""

    @pytest.fixture
    def limited_url(self, postgres_url: str) -> Iterator[Callable[[int], str]]:
        """DATABASE_URL as a login role of this test's own, allowed `limit` connections."""
        admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
        names: list[str] = []

        def make(limit: int) -> str:
            name = f"platica_limited_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}")
            names.append(name)
            return make_url(postgres_url).set(username=name).render_as_string(False)

        yield make
        with psycopg.connect(admin, autocommit=True) as connection:
            for name in names:
                connection.execute(f"DROP ROLE {name}")

    def check(
        self, url: str, pool_size: int, capsys: pytest.CaptureFixture[str]
    ) -> tuple[bool, str]:
        report = Report()
        check_connections(report, make_settings(url, DATABASE_POOL_SIZE=pool_size), True)
        return report.failed, capsys.readouterr().out.strip()

    def test_pools_larger_than_the_limit_fail_with_the_size_that_fits(
        self, limited_url: Callable[[int], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = limited_url(30)

        failed, line = self.check(url, 20, capsys)

        assert failed
        assert line == (
            "✗ database connections: one `platica serve` and its worker hold up to 81"
            " (DATABASE_POOL_SIZE=20), more than the 30 left: the role's CONNECTION LIMIT is 30,"
            " 0 held by other clients — set DATABASE_POOL_SIZE=7 (29 at most) or raise it"
        )
        assert self.check(url, 7, capsys) == (
            False,
            "✓ database connections: one `platica serve` and its worker hold up to 29"
            " (DATABASE_POOL_SIZE=7); the role's CONNECTION LIMIT is 30, 0 held by other clients",
        )

    def test_a_limit_too_low_for_any_pool_says_to_raise_it(
        self, limited_url: Callable[[int], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        failed, line = self.check(limited_url(4), 1, capsys)

        assert failed
        assert line.endswith(
            "hold up to 5 (DATABASE_POOL_SIZE=1), more than the 4 left: the role's CONNECTION"
            " LIMIT is 4, 0 held by other clients — raise it"
        )

    async def test_other_clients_count_and_platicas_own_do_not(
        self, limited_url: Callable[[int], str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A server already running (its connections named "platica") is the one the pools are
        for: only the other clients' connections take room."""
        url = limited_url(30)
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        others = [await psycopg.AsyncConnection.connect(conninfo) for _ in range(2)]
        running = await db.open_driver_pool(url, size=3)
        try:
            await running.wait(timeout=10)
            failed, line = await asyncio.to_thread(self.check, url, 7, capsys)
        finally:
            await running.close()
            for connection in others:
                await connection.close()

        assert failed
        assert line.endswith(
            "more than the 28 left: the role's CONNECTION LIMIT is 30, 2 held by other clients"
            " — set DATABASE_POOL_SIZE=6 (25 at most) or raise it"
        )


def head() -> str | None:
    from platica import db

    return db.head_revision()


class TestClockSkew:
    def test_ahead_and_behind(self) -> None:
        sent = datetime(2026, 12, 6, 20, 0, 0, tzinfo=UTC)
        received = sent + timedelta(seconds=2)
        assert clock_skew("Sun, 06 Dec 2026 19:58:00 GMT", sent, received) == 121.0
        assert clock_skew("Sun, 06 Dec 2026 20:01:31 GMT", sent, received) == -90.0
