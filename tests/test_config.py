"""Settings: SPEC §2 defaults, one-line errors naming the variable, seed aliases, env and .env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from platica.config import ConfigError, Settings, describe_errors, get_settings, load_settings
from tests.factories import ACCOUNT_SID, AUTH_TOKEN

TWILIO_PAIR = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
PUBLIC = "https://platica.example.com"


def config_error(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    return str(caught.value)


class TestDefaults:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("DATABASE_URL", "sqlite+aiosqlite:///./platica.db"),
            ("OPENAI_MODEL", "gpt-4o-mini"),
            ("TWILIO_API_BASE_URL", "https://api.twilio.com"),
            ("LOG_FORMAT", "console"),
            ("OPENAI_API_KEY", None),
            ("TWILIO_AUTH_TOKEN", None),
            ("PUBLIC_BASE_URL", None),
            ("CORS_ORIGINS", []),
        ],
    )
    def test_default(self, name: str, expected: object) -> None:
        assert getattr(load_settings(), name) == expected

    def test_log_level_is_info(self) -> None:
        assert load_settings().log_level == "INFO"

    def test_twilio_not_configured(self) -> None:
        settings = load_settings()
        assert not settings.twilio_configured
        assert settings.is_sqlite


class TestMisconfiguration:
    @pytest.mark.parametrize(
        ("overrides", "variable"),
        [
            pytest.param({"DATABASE_URL": "mysql://u@db/app"}, "DATABASE_URL", id="db-scheme"),
            pytest.param({"DATABASE_URL": "not a url"}, "DATABASE_URL", id="db-garbage"),
            pytest.param(
                {"DATABASE_URL": "sqlite+aiosqlite://platica.db"}, "DATABASE_URL", id="db-sqlite"
            ),
            pytest.param({"DATABASE_URL": "postgresql:///app"}, "DATABASE_URL", id="db-no-host"),
            pytest.param({"PUBLIC_BASE_URL": "example.com"}, "PUBLIC_BASE_URL", id="public-url"),
            pytest.param(
                {"OPENAI_BASE_URL": "ftp://models.local/v1"}, "OPENAI_BASE_URL", id="openai-url"
            ),
            pytest.param(
                {"TWILIO_API_BASE_URL": "api.twilio.com"}, "TWILIO_API_BASE_URL", id="twilio-url"
            ),
            pytest.param(
                {**TWILIO_PAIR, "TWILIO_AUTH_TOKEN": "your_auth_token"},
                "TWILIO_AUTH_TOKEN",
                id="token-your",
            ),
            pytest.param(
                {**TWILIO_PAIR, "TWILIO_AUTH_TOKEN": "changeme"},
                "TWILIO_AUTH_TOKEN",
                id="token-changeme",
            ),
            pytest.param(
                {**TWILIO_PAIR, "TWILIO_AUTH_TOKEN": "<token>"},
                "TWILIO_AUTH_TOKEN",
                id="token-brackets",
            ),
            pytest.param({"OPENAI_API_KEY": "sk-..."}, "OPENAI_API_KEY", id="openai-key"),
            pytest.param(
                {"PLATICA_ADMIN_TOKEN": "change-me"}, "PLATICA_ADMIN_TOKEN", id="admin-token"
            ),
            pytest.param(
                {"PLATICA_ADMIN_TOKEN": "hunter2"}, "PLATICA_ADMIN_TOKEN", id="admin-token-weak"
            ),
            pytest.param(
                {"PLATICA_ADMIN_TOKEN": "x7" * 11 + "q"},
                "PLATICA_ADMIN_TOKEN",
                id="admin-token-23-characters",
            ),
            pytest.param(
                {"TWILIO_PHONE_NUMBER": "12345"}, "TWILIO_PHONE_NUMBER", id="phone-digits"
            ),
            pytest.param(
                {"TWILIO_PHONE_NUMBER": "+1 415 555 0100"}, "TWILIO_PHONE_NUMBER", id="phone-spaces"
            ),
            pytest.param(
                {"TWILIO_WHATSAPP_NUMBER": "whatsapp:14155238886"},
                "TWILIO_WHATSAPP_NUMBER",
                id="whatsapp-no-plus",
            ),
            pytest.param(
                {**TWILIO_PAIR, "TWILIO_ACCOUNT_SID": "AC123"}, "TWILIO_ACCOUNT_SID", id="sid"
            ),
            pytest.param(
                {"TWILIO_ACCOUNT_SID": ACCOUNT_SID}, "TWILIO_AUTH_TOKEN", id="sid-without-token"
            ),
            pytest.param(
                {"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, "TWILIO_ACCOUNT_SID", id="token-without-sid"
            ),
            pytest.param({"LOG_LEVEL": "verbose"}, "LOG_LEVEL", id="log-level"),
            pytest.param({"SMS_LOG_LEVEL": "loud"}, "SMS_LOG_LEVEL", id="seed-log-level"),
            pytest.param({"LOG_FORMAT": "xml"}, "LOG_FORMAT", id="log-format"),
            pytest.param({"CORS_ORIGINS": "example.com"}, "CORS_ORIGINS", id="cors"),
            pytest.param(
                {"ALLOWED_HOSTS": "https://example.com"}, "ALLOWED_HOSTS", id="allowed-url"
            ),
            pytest.param({"ALLOWED_HOSTS": "ex*mple.com"}, "ALLOWED_HOSTS", id="allowed-star"),
            pytest.param({"ALLOWED_HOSTS": "example.com:8000"}, "ALLOWED_HOSTS", id="allowed-port"),
            pytest.param({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE", id="pool-empty"),
            pytest.param({"DATABASE_POOL_SIZE": "500"}, "DATABASE_POOL_SIZE", id="pool-huge"),
        ],
    )
    def test_one_line_naming_the_variable(self, overrides: dict[str, Any], variable: str) -> None:
        message = config_error(**overrides)
        assert len(message.splitlines()) == 1
        assert message.startswith(f"Invalid configuration: {variable}: ")

    @pytest.mark.parametrize(
        ("overrides", "secret"),
        [
            pytest.param(
                {**TWILIO_PAIR, "TWILIO_AUTH_TOKEN": "your_auth_token"},
                "your_auth_token",
                id="placeholder",
            ),
            pytest.param({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, AUTH_TOKEN, id="token-without-sid"),
            pytest.param(
                {"SUPABASE_JWT_SECRET": "your-super-secret-jwt-token"},
                "your-super-secret-jwt-token",
                id="jwt-secret",
            ),
            pytest.param(
                {"DATABASE_URL": "postgresql//app:hunter2@db.example.com/app"},
                "hunter2",
                id="database-password",
            ),
            pytest.param(
                {"PUBLIC_BASE_URL": "htps://app:hunter2@example.com"},
                "hunter2",
                id="url-password",
            ),
        ],
    )
    def test_secret_not_echoed(self, overrides: dict[str, Any], secret: str) -> None:
        message = config_error(**overrides)
        assert secret not in message

    def test_one_line_per_bad_variable(self) -> None:
        message = config_error(
            DATABASE_URL="mysql://db/app", TWILIO_PHONE_NUMBER="12345", LOG_LEVEL="loud"
        )
        lines = message.splitlines()
        assert len(lines) == 3
        for variable in ("DATABASE_URL", "TWILIO_PHONE_NUMBER", "LOG_LEVEL"):
            assert sum(f"Invalid configuration: {variable}: " in line for line in lines) == 1

    def test_real_secrets_accepted(self) -> None:
        settings = load_settings(
            **TWILIO_PAIR, PUBLIC_BASE_URL=PUBLIC, OPENAI_API_KEY="sk-proj-" + "Ab3" * 16
        )
        assert settings.twilio_configured
        assert settings.TWILIO_AUTH_TOKEN is not None
        assert settings.TWILIO_AUTH_TOKEN.get_secret_value() == AUTH_TOKEN
        assert AUTH_TOKEN not in repr(settings)


class TestAdminToken:
    def test_24_characters_are_enough(self) -> None:
        token = load_settings(PLATICA_ADMIN_TOKEN="x7" * 12).PLATICA_ADMIN_TOKEN
        assert token is not None
        assert token.get_secret_value() == "x7" * 12

    def test_a_short_token_is_refused_without_echoing_it(self) -> None:
        message = config_error(PLATICA_ADMIN_TOKEN="hunter2")
        assert message == (
            "Invalid configuration: PLATICA_ADMIN_TOKEN: must be at least 24 characters "
            "(e.g. the output of `openssl rand -hex 24`)"
        )


class TestPublicBaseUrl:
    """Item 3 of issue 12: a worker never sees a webhook, so it cannot learn the URL Twilio
    calls; with Twilio credentials set, StatusCallback needs PUBLIC_BASE_URL."""

    def test_required_with_twilio_credentials(self) -> None:
        message = config_error(**TWILIO_PAIR)
        assert len(message.splitlines()) == 1
        assert message.startswith("Invalid configuration: PUBLIC_BASE_URL: ")
        assert "TWILIO_AUTH_TOKEN" in message

    def test_optional_without_twilio_credentials(self) -> None:
        assert load_settings().PUBLIC_BASE_URL is None

    def test_status_callback_is_built_from_it(self) -> None:
        settings = load_settings(**TWILIO_PAIR, PUBLIC_BASE_URL="https://platica.example.com/")
        assert settings.status_callback_url == "https://platica.example.com/webhook/status"

    def test_no_status_callback_without_it(self) -> None:
        assert load_settings().status_callback_url is None


class TestDescribeErrors:
    def test_names_each_variable_without_input(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Settings(_env_file=None, TWILIO_PHONE_NUMBER="555-0100", LOG_FORMAT="yaml")
        text = describe_errors(caught.value)
        assert text.splitlines() == [
            "Invalid configuration: TWILIO_PHONE_NUMBER: must be an E.164 number like +14155550100",
            "Invalid configuration: LOG_FORMAT: Input should be 'console' or 'json'",
        ]


class TestNumbers:
    def test_e164_kept(self) -> None:
        assert load_settings(TWILIO_PHONE_NUMBER="+15005550006").TWILIO_PHONE_NUMBER == (
            "+15005550006"
        )

    def test_whatsapp_prefix_stripped(self) -> None:
        settings = load_settings(TWILIO_WHATSAPP_NUMBER="whatsapp:+14155238886")
        assert settings.TWILIO_WHATSAPP_NUMBER == "+14155238886"


class TestLogLevel:
    def test_whatsapp_enable_debug(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WHATSAPP_ENABLE_DEBUG", "true")
        assert load_settings().log_level == "DEBUG"

    def test_sms_enable_debug(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SMS_ENABLE_DEBUG", "1")
        assert load_settings().log_level == "DEBUG"

    def test_sms_log_level(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SMS_LOG_LEVEL", "warning")
        assert load_settings().log_level == "WARNING"

    def test_most_verbose_seed_level_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SMS_LOG_LEVEL", "error")
        monkeypatch.setenv("WHATSAPP_LOG_LEVEL", "warning")
        assert load_settings().log_level == "WARNING"

    def test_log_level_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LOG_LEVEL", "error")
        monkeypatch.setenv("WHATSAPP_ENABLE_DEBUG", "true")
        monkeypatch.setenv("SMS_LOG_LEVEL", "warning")
        assert load_settings().log_level == "ERROR"


class TestCorsOrigins:
    def test_comma_separated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com, http://localhost:5173/ ,")
        assert load_settings().CORS_ORIGINS == ["https://app.example.com", "http://localhost:5173"]

    def test_single_origin(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com")
        assert load_settings().CORS_ORIGINS == ["https://app.example.com"]

    def test_wildcard(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORS_ORIGINS", "*")
        assert load_settings().CORS_ORIGINS == ["*"]


class TestAllowedHosts:
    def test_default_is_this_server_and_the_loopback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = load_settings(**TWILIO_PAIR, PUBLIC_BASE_URL="https://Platica.Example.com/x")
        assert settings.ALLOWED_HOSTS == []
        assert settings.trusted_hosts == [
            "platica.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
        ]

    def test_comma_separated_added(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ALLOWED_HOSTS", " Platica.internal ,*.example.org,")
        settings = load_settings()
        assert settings.ALLOWED_HOSTS == ["platica.internal", "*.example.org"]
        assert settings.trusted_hosts[-2:] == ["platica.internal", "*.example.org"]

    def test_star(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ALLOWED_HOSTS", "*")
        assert load_settings().trusted_hosts == ["*"]


class TestSources:
    def test_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENAI_MODEL", "llama3.1:8b")
        monkeypatch.setenv("TWILIO_PHONE_NUMBER", "+15005550006")
        settings = load_settings()
        assert settings.OPENAI_MODEL == "llama3.1:8b"
        assert settings.TWILIO_PHONE_NUMBER == "+15005550006"

    def test_dotenv_in_working_directory(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text(
            "OPENAI_MODEL=gpt-4o\n"
            f"TWILIO_ACCOUNT_SID={ACCOUNT_SID}\n"
            f"TWILIO_AUTH_TOKEN={AUTH_TOKEN}\n"
            f"PUBLIC_BASE_URL={PUBLIC}\n"
            "TWILIO_WHATSAPP_NUMBER=whatsapp:+14155238886\n"
            "CORS_ORIGINS=https://a.example.com,https://b.example.com\n",
            encoding="utf-8",
        )
        settings = load_settings()
        assert settings.OPENAI_MODEL == "gpt-4o"
        assert settings.twilio_configured
        assert settings.TWILIO_WHATSAPP_NUMBER == "+14155238886"
        assert settings.CORS_ORIGINS == ["https://a.example.com", "https://b.example.com"]

    def test_environment_beats_dotenv(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / ".env").write_text("OPENAI_MODEL=from-dotenv\n", encoding="utf-8")
        monkeypatch.setenv("OPENAI_MODEL", "from-environment")
        assert load_settings().OPENAI_MODEL == "from-environment"

    def test_dotenv_error_names_variable(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("TWILIO_PHONE_NUMBER=5550100\n", encoding="utf-8")
        assert config_error().startswith("Invalid configuration: TWILIO_PHONE_NUMBER: ")

    def test_empty_variable_means_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "")
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", "")
        settings = load_settings()
        assert settings.DATABASE_URL == "sqlite+aiosqlite:///./platica.db"
        assert settings.TWILIO_AUTH_TOKEN is None

    def test_get_settings_reads_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TWILIO_PHONE_NUMBER", "12345")
        with pytest.raises(ConfigError, match="TWILIO_PHONE_NUMBER"):
            get_settings()


class TestServeCommand:
    def test_bad_number_stops_with_one_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import uvicorn

        from platica.cli import app

        served: list[object] = []
        # If the check ever let this through, fail instead of serving forever.
        monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(args))
        monkeypatch.setenv("TWILIO_PHONE_NUMBER", "12345")
        get_settings.cache_clear()

        result = CliRunner().invoke(app, ["serve"])

        assert result.exit_code == 2
        assert served == []
        assert result.stderr.splitlines() == [
            "Invalid configuration: TWILIO_PHONE_NUMBER: must be an E.164 number like +14155550100"
        ]

    @pytest.mark.parametrize("command", ["serve", "worker"])
    def test_twilio_without_public_base_url_stops_with_one_line(
        self, command: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import uvicorn

        from platica.cli import app

        served: list[object] = []
        monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(args))
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/none")
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        get_settings.cache_clear()

        result = CliRunner().invoke(app, [command])

        assert result.exit_code == 2
        assert served == []
        [line] = result.stderr.splitlines()
        assert line.startswith("Invalid configuration: PUBLIC_BASE_URL: ")
