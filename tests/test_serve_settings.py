"""Production settings that refuse silent failure (issue 16, point 6), and the first run's
one-time login link (point 5): PUBLIC_BASE_URL required with Twilio credentials, the seeds'
webhook secrets warned about, HOST/PORT for `platica serve`, and the link the first start
prints for the default account."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from platica.dashboard.session import COOKIE_NAME, issue_login_link
from platica.models import utcnow
from tests.conftest import Database, LiveServer, free_port, make_settings
from tests.dashboard.client import DashboardClient
from tests.factories import ACCOUNT_SID, AUTH_TOKEN
from tests.logs import log_events
from tests.polling import wait_for
from tests.records import in_session

LINK = re.compile(r"(http://\S+)/login/link/([A-Za-z0-9_-]{43})\b")


def platica_env(**values: str) -> dict[str, str]:
    """The environment of a `platica` command: this one's without Plática's variables."""
    from tests.conftest import SETTINGS_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **values}


def run_platica(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platica", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestPublicBaseUrlRequired:
    """The real command, as an operator runs it: with Twilio credentials and no
    PUBLIC_BASE_URL it stops before serving, with one line naming the variable and why."""

    @pytest.mark.parametrize("command", ["serve", "worker"])
    def test_stops_naming_the_variable(self, command: str, tmp_path: Path) -> None:
        env = platica_env(
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/platica.db",
            TWILIO_ACCOUNT_SID=ACCOUNT_SID,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PORT=str(free_port()),
        )

        result = run_platica(command, env=env, cwd=tmp_path)

        assert result.returncode == 2, result.stdout + result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("Invalid configuration: PUBLIC_BASE_URL: required when ")
        assert "status callbacks" in line
        assert AUTH_TOKEN not in result.stderr + result.stdout
        assert not (tmp_path / "platica.db").exists()  # nothing served, nothing migrated

    def test_a_dot_env_file_counts_too(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text(
            f"TWILIO_ACCOUNT_SID={ACCOUNT_SID}\nTWILIO_AUTH_TOKEN={AUTH_TOKEN}\n"
        )
        env = platica_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/platica.db")

        result = run_platica("serve", env=env, cwd=tmp_path)

        assert result.returncode == 2
        assert result.stderr.startswith("Invalid configuration: PUBLIC_BASE_URL: ")


class TestHostAndPort:
    def test_defaults(self) -> None:
        settings = make_settings("sqlite+aiosqlite:////tmp/x.db")
        assert (settings.HOST, settings.PORT) == ("127.0.0.1", 8000)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("PORT", "0"),
            ("PORT", "65536"),
            ("PORT", "eighty"),
            ("HOST", "http://0.0.0.0"),
            ("HOST", "127.0.0.1:8000"),
            ("HOST", "my host"),
        ],
    )
    def test_a_bad_value_stops_serve_naming_it(
        self, name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served = _patched_uvicorn(monkeypatch)
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/platica.db")
        monkeypatch.setenv(name, value)

        result = _serve(tmp_path)

        assert result.exit_code == 2
        assert served == []
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Invalid configuration: {name}: ")

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "localhost", "10.1.2.3"])
    def test_good_hosts(self, host: str) -> None:
        assert host == make_settings("sqlite+aiosqlite:////tmp/x.db", HOST=host).HOST

    def test_options_win_over_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served = _patched_uvicorn(monkeypatch)
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/platica.db")
        monkeypatch.setenv("HOST", "0.0.0.0")
        monkeypatch.setenv("PORT", "8081")

        from_env = _serve(tmp_path)
        from_options = _serve(tmp_path, "--host", "127.0.0.2", "--port", "9091")

        assert from_env.exit_code == 0, from_env.output
        assert from_options.exit_code == 0, from_options.output
        assert [(s["host"], s["port"]) for s in served] == [
            ("0.0.0.0", 8081),
            ("127.0.0.2", 9091),
        ]
        assert "Plática on http://127.0.0.2:9091" in from_options.stdout

    def test_a_bad_host_option_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served = _patched_uvicorn(monkeypatch)
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/platica.db")

        result = _serve(tmp_path, "--host", "https://example.com")

        assert result.exit_code == 2
        assert served == []
        assert "--host" in result.stderr

    def test_serve_listens_on_port_from_the_environment(self, tmp_path: Path) -> None:
        """The real command on an empty database: /healthz answers on PORT, the banner
        carries the first run's login link, which logs in once, and a seed's webhook secret in
        the environment is warned about."""
        port = free_port()
        env = platica_env(
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/platica.db",
            HOST="127.0.0.1",
            PORT=str(port),
            LOG_LEVEL="INFO",
            SMS_WEBHOOK_SECRET="seed-secret-value-42",
        )
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "platica", "serve"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                if process.poll() is not None:
                    pytest.fail(f"serve exited: {log.read_text()[-3000:]}")
                try:
                    return httpx.get(url + "/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, "serve to answer on PORT", seconds=60)
            found = LINK.search(log.read_text())
            assert found is not None, log.read_text()
            assert found[1] == url
            # The default account's numbers, logged as it is made, are masked like any other.
            assert "accounts.number_assigned" in log.read_text()
            assert "+14155238886" not in log.read_text()
            # The seed's secret, from the environment: warned about, never shown.
            assert "startup.seed_secrets_ignored" in log.read_text()
            assert "seed-secret-value-42" not in log.read_text()
            link = found[0]
            with httpx.Client(timeout=10) as browser:
                first = browser.get(link)
                assert first.status_code == 303
                assert first.headers["location"] == "/"
                inbox = browser.get(url + "/")
                assert inbox.status_code == 200
                assert "login" not in str(inbox.url)
            with httpx.Client(timeout=10) as other:
                again = other.get(link)
                assert again.status_code == 410
                assert "ya se usó" in again.text  # Spanish: no Accept-Language
        finally:
            process.terminate()
            process.wait(timeout=15)


def _patched_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run recording its host and port instead of serving."""
    import uvicorn

    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: served.append(kwargs))
    return served


def _serve(tmp_path: Path, *options: str) -> Any:
    from platica.cli import app
    from platica.config import get_settings

    get_settings.cache_clear()
    return CliRunner().invoke(app, ["serve", "--no-worker", *options])


class TestFirstRunLink:
    def test_printed_only_when_the_default_account_is_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _patched_uvicorn(monkeypatch)
        url = f"sqlite+aiosqlite:///{tmp_path}/platica.db"
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PORT", "8123")

        first = _serve(tmp_path)
        second = _serve(tmp_path)

        assert first.exit_code == 0, first.output
        found = LINK.search(first.stdout)
        assert found is not None, first.stdout
        assert found[1] == "http://127.0.0.1:8123"
        assert "/login/link/" not in second.stdout
        database = Database(url)
        try:
            stored = database.rows("SELECT id_hash, kind, account_id FROM dashboard_sessions")
            default = database.scalar("SELECT id FROM accounts WHERE name = 'default'")
        finally:
            database.engine.dispose()
        # Only the token's hash is stored.
        [row] = stored
        assert row.kind == "login_link"
        assert str(row.account_id).replace("-", "") == str(default).replace("-", "")
        assert found[2] not in row.id_hash

    def test_uses_public_base_url(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _patched_uvicorn(monkeypatch)
        monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/platica.db")
        monkeypatch.setenv("PUBLIC_BASE_URL", "https://platica.example.com")

        result = _serve(tmp_path)

        found = LINK.search(result.stdout.replace("https://", "http://"))
        assert found is not None, result.stdout
        assert "https://platica.example.com/login/link/" in result.stdout


@pytest.fixture
def server(database_url: str, live_server: Any) -> LiveServer:
    started: LiveServer = live_server(make_settings(database_url), worker=False)
    return started


@pytest.fixture
def browser(server: LiveServer) -> Iterator[DashboardClient]:
    client = DashboardClient(server)
    yield client
    client.close()


def default_account(database: Database) -> uuid.UUID:
    return uuid.UUID(str(database.scalar("SELECT id FROM accounts WHERE name = 'default'")))


class TestLoginLink:
    """The link over the dashboard's real HTTP: it logs in once, as the normal login does."""

    def test_logs_in_once(
        self, server: LiveServer, browser: DashboardClient, database: Database, database_url: str
    ) -> None:
        account_id = default_account(database)
        token = in_session(database_url, lambda s: issue_login_link(s, account_id))

        used = browser.http.get(f"/login/link/{token}")

        assert used.status_code == 303
        assert used.headers["location"] == "/"
        assert COOKIE_NAME in browser.http.cookies
        inbox = browser.http.get("/")
        assert inbox.status_code == 200
        assert "default" in inbox.text
        assert database.scalar("SELECT count(*) FROM dashboard_sessions WHERE kind = 'link'") == 1
        assert database.count("dashboard_sessions") == 1  # the link's own row is gone

        with httpx.Client(base_url=server.url, timeout=30) as other:
            again = other.get(f"/login/link/{token}")
            assert again.status_code == 410
            assert "ya se usó" in again.text  # Spanish: no Accept-Language
            assert 'action="/login"' in again.text  # the login page
            assert other.get("/").status_code == 303  # not logged in

    def test_of_four_browsers_at_once_one_logs_in(
        self, server: LiveServer, database: Database, database_url: str
    ) -> None:
        account_id = default_account(database)
        token = in_session(database_url, lambda s: issue_login_link(s, account_id))
        start = threading.Barrier(4)

        def use() -> int:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                start.wait()
                return client.get(f"/login/link/{token}").status_code

        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(pool.map(lambda _: use(), range(4)))

        assert statuses == [303, 410, 410, 410]
        assert database.scalar("SELECT count(*) FROM dashboard_sessions WHERE kind = 'link'") == 1

    def test_the_session_ends_at_logout(
        self, browser: DashboardClient, database: Database, database_url: str
    ) -> None:
        account_id = default_account(database)
        token = in_session(database_url, lambda s: issue_login_link(s, account_id))
        assert browser.http.get(f"/login/link/{token}").status_code == 303

        assert browser.log_out().status_code == 303

        assert browser.http.get("/").status_code == 303
        assert database.count("dashboard_sessions") == 0

    def test_an_expired_link_is_refused(
        self, browser: DashboardClient, database: Database, database_url: str
    ) -> None:
        account_id = default_account(database)
        token = in_session(database_url, lambda s: issue_login_link(s, account_id))
        database.execute(
            "UPDATE dashboard_sessions SET expires_at = :past", past=utcnow().replace(year=2020)
        )

        refused = browser.http.get(f"/login/link/{token}")

        assert refused.status_code == 410
        assert "expired" in refused.text
        assert browser.http.get("/").status_code == 303

    def test_a_made_up_link_is_refused(self, browser: DashboardClient) -> None:
        refused = browser.http.get("/login/link/" + "A" * 43)
        assert refused.status_code == 410
        assert "not a valid link" in refused.text


class LevelsOf(logging.Handler):
    """The levels an event was logged at."""

    def __init__(self, event: str) -> None:
        super().__init__(logging.DEBUG)
        self.event = event
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict) and record.msg.get("event") == self.event:
            self.levels.append(record.levelno)


class TestSeedSecrets:
    """The original services' webhook secrets protect nothing here: start-up says so, and
    what does protect the webhooks."""

    @pytest.mark.parametrize(
        "names", [["WHATSAPP_WEBHOOK_SECRET"], ["WHATSAPP_WEBHOOK_SECRET", "SMS_WEBHOOK_SECRET"]]
    )
    def test_warned_at_start_up(self, names: list[str], sqlite_url: str) -> None:
        settings = make_settings(sqlite_url, **dict.fromkeys(names, "s3cr3t-from-the-seed"))
        server = LiveServer(settings, worker=False)
        levels = LevelsOf("startup.seed_secrets_ignored")
        with log_events() as logs:
            logging.getLogger().addHandler(levels)
            try:
                server.start()
            finally:
                logging.getLogger().removeHandler(levels)
        try:
            [event] = logs.named("startup.seed_secrets_ignored")
        finally:
            server.stop()
        assert levels.levels == [logging.WARNING]
        assert event["variables"] == names
        for name in names:
            assert name in event["detail"]
        assert "X-Twilio-Signature" in event["detail"]
        assert "TWILIO_AUTH_TOKEN" in event["detail"]
        assert "s3cr3t" not in str(event)

    def test_read_from_dot_env(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("SMS_WEBHOOK_SECRET=from-the-seed\n")
        from platica.config import load_settings

        assert load_settings().ignored_seed_secrets == ["SMS_WEBHOOK_SECRET"]

    def test_no_warning_without_them(self, sqlite_url: str) -> None:
        server = LiveServer(make_settings(sqlite_url), worker=False)
        with log_events() as logs:
            server.start()
        server.stop()
        assert logs.named("startup.seed_secrets_ignored") == []
        assert logs.named("startup.offline_responder")  # its warnings were captured
