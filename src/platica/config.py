"""Settings: every variable of SPEC §2, read from the environment or `.env`, checked at start-up."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
# Values copied from tutorials and templates that were never replaced with a real secret.
PLACEHOLDER = re.compile(
    r"^(<.*>|\$\{.*\}|x+|changeme|change[-_]?me|secret|token|password|your[-_ ].*|.*[-_]here|"
    r"replace[-_ ]?me|todo|none|null|example|test|placeholder|sk-\.\.\.|\.\.\.)$",
    re.IGNORECASE,
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ADMIN_TOKEN_MIN_LENGTH = 24
# An ALLOWED_HOSTS entry: "*", a name or IPv4 address (with "*." in front: any subdomain), or
# a bracketed IPv6 address.
HOST_PATTERN = re.compile(r"^(\*|(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])$")
# HOST, the interface `platica serve` listens on: a name or an address, without scheme or port.
LISTEN_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
# The original services' webhook secrets. Plática reads them only to warn that they protect
# nothing here: Twilio's X-Twilio-Signature, checked with TWILIO_AUTH_TOKEN, does.
SEED_SECRETS = ("WHATSAPP_WEBHOOK_SECRET", "SMS_WEBHOOK_SECRET")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable, one line each."""


def redact_url(url: str) -> str:
    """The URL as it may be shown in an error: without the password of `user:password@`."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    start = head.find("//") + 2 if "//" in head else 0
    user, colon, _password = head[start:].partition(":")
    return f"{head[:start]}{user}{colon and ':***'}@{tail}"


def _check_url(value: str | None, *, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a URL like {schemes[-1]}://host, got {redact_url(value)!r}")
    return value.rstrip("/")


def _check_secret(value: SecretStr | None) -> SecretStr | None:
    if value is None or value.get_secret_value() == "":
        return None
    if PLACEHOLDER.match(value.get_secret_value().strip()):
        raise ValueError("is a placeholder, not a real secret")
    return value


def check_listen_host(value: str) -> str:
    """HOST or --host: an interface name or address to listen on, without scheme or port."""
    host = value.strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not LISTEN_NAME.match(host):
            raise ValueError(
                "must be an address or name to listen on, like 127.0.0.1, 0.0.0.0 or :: "
                f"(no scheme, port or path), got {value!r}"
            ) from None
    return host


def strip_channel_prefix(address: str) -> str:
    """`whatsapp:+1415...` -> `+1415...`; other addresses unchanged."""
    return address.split(":", 1)[1] if address.startswith("whatsapp:") else address


class Settings(BaseSettings):
    """Plática's configuration. Field names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        env_ignore_empty=True,
    )

    DATABASE_URL: str = "sqlite+aiosqlite:///./platica.db"
    # PostgreSQL: connections in each of a process's two pools (db/engine.py), kept open once
    # made (the message path's pool opens all of its own at start-up). One `platica serve` and
    # its worker child hold up to 4 x this + 1: lower it to fit a hosted database's connection
    # cap (Supabase's session pooler: the project's Pool Size).
    DATABASE_POOL_SIZE: int = Field(20, ge=1, le=100)
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    OPENAI_MODEL: str = "gpt-4o-mini"
    # SPEC §7: voice notes go to OPENAI_BASE_URL's /audio/transcriptions with this model.
    TRANSCRIPTION_MODEL: str = "gpt-4o-mini-transcribe"
    # SPEC §7: the largest media item fetched from Twilio (bytes); a larger one is not fetched.
    MEDIA_MAX_BYTES: int = Field(16 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    TWILIO_ACCOUNT_SID: str | None = None
    TWILIO_AUTH_TOKEN: SecretStr | None = None
    TWILIO_WHATSAPP_NUMBER: str | None = None
    TWILIO_PHONE_NUMBER: str | None = None
    TWILIO_API_BASE_URL: str = "https://api.twilio.com"
    # Where Content API calls (templates) go: Twilio serves it from its own host.
    TWILIO_CONTENT_BASE_URL: str = "https://content.twilio.com"
    # Where Messaging API calls (the WhatsApp Senders API: `platica doctor`, `platica twilio
    # connect`) go: Twilio serves it from its own host too.
    TWILIO_MESSAGING_BASE_URL: str = "https://messaging.twilio.com"
    PUBLIC_BASE_URL: str | None = None
    # Where `platica serve` (and so `make run`) listens; its --host/--port options win.
    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)
    PLATICA_ADMIN_TOKEN: SecretStr | None = None
    # The Supabase project (https://<ref>.supabase.co): user JWTs are verified with the signing
    # keys it publishes at /auth/v1/.well-known/jwks.json (ES256, RS256; platica/supabase.py).
    SUPABASE_URL: str | None = None
    # The project's legacy shared secret: user JWTs signed with it (HS256) are accepted too.
    SUPABASE_JWT_SECRET: SecretStr | None = None
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Host names requests may carry besides PUBLIC_BASE_URL's and the loopback's ("*": any).
    ALLOWED_HOSTS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    SENTRY_DSN: str | None = None
    # SPEC §7: when set, GET /metrics requires `Authorization: Bearer <METRICS_TOKEN>`.
    METRICS_TOKEN: SecretStr | None = None
    LOG_LEVEL: str | None = None
    LOG_FORMAT: Literal["console", "json"] = "console"
    # Beyond SPEC §2: at most how many conversations one worker process answers at once. A reply
    # mostly waits on the LLM (holding no database connection), so this is a ceiling for memory
    # and sockets, far above what the CPU or the LLM provider's limits allow (jobs/runner.py).
    WORKER_CONCURRENCY: int = Field(1000, ge=1, le=10000)
    # Limits (ratelimit.py), as "N/second|minute|hour|day", or "off". The first two pace the AI's
    # replies (a message over them is answered later, with what follows); the flood limit is
    # the only one that leaves messages unanswered.
    RATE_LIMIT_PER_SENDER: str = "20/minute"
    RATE_LIMIT_PER_ACCOUNT: str = "off"
    RATE_LIMIT_FLOOD: str = "120/minute"
    RATE_LIMIT_API: str = "120/minute"
    # Names from the original WhatsApp and SMS services, still honoured.
    WHATSAPP_ENABLE_DEBUG: bool = False
    WHATSAPP_LOG_LEVEL: str | None = None
    SMS_ENABLE_DEBUG: bool = False
    SMS_LOG_LEVEL: str | None = None
    # Read only to warn at start-up that they are ignored (SEED_SECRETS): never used.
    WHATSAPP_WEBHOOK_SECRET: SecretStr | None = None
    SMS_WEBHOOK_SECRET: SecretStr | None = None

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme.startswith("sqlite"):
            if not value.split("://", 1)[-1].startswith("/"):
                raise ValueError(
                    f"must look like sqlite+aiosqlite:///path/to/file.db, got {redact_url(value)!r}"
                )
            return value
        if scheme.split("+")[0] in ("postgresql", "postgres"):
            if not urlsplit(value).hostname and "host=" not in value:
                raise ValueError("must name a host, like postgresql://user@host:5432/db")
            return value
        raise ValueError(
            "must start with sqlite+aiosqlite:/// or postgresql://, "
            f"got {scheme or redact_url(value)!r}"
        )

    @field_validator("OPENAI_BASE_URL", "PUBLIC_BASE_URL")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("TWILIO_API_BASE_URL", "TWILIO_CONTENT_BASE_URL", "TWILIO_MESSAGING_BASE_URL")
    @classmethod
    def _url(cls, value: str) -> str:
        checked = _check_url(value)
        if checked is None:
            raise ValueError("must be a URL like https://api.twilio.com")
        return checked

    @field_validator("HOST")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_listen_host(value)

    @field_validator("SUPABASE_URL")
    @classmethod
    def _supabase_url(cls, value: str | None) -> str | None:
        checked = _check_url(value)
        if checked is None:
            return None
        parts = urlsplit(checked)
        if parts.path or parts.query or parts.fragment:
            raise ValueError(
                "must be the project URL alone, like https://abcdefghijklmnop.supabase.co "
                f"(no path such as /auth/v1), got {checked!r}"
            )
        # The signing keys decide who is let in: never fetch them over plain HTTP from afar.
        if parts.scheme != "https" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise ValueError(f"must be an https:// URL (http only for localhost), got {checked!r}")
        return checked

    @field_validator("SENTRY_DSN")
    @classmethod
    def _sentry(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator(
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "PLATICA_ADMIN_TOKEN",
        "SUPABASE_JWT_SECRET",
        "METRICS_TOKEN",
    )
    @classmethod
    def _secrets(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_secret(value)

    @field_validator("PLATICA_ADMIN_TOKEN")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        # It opens every account: long enough that it cannot be guessed (after the placeholder
        # check of _secrets, which runs first).
        if value is not None and len(value.get_secret_value()) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters "
                "(e.g. the output of `openssl rand -hex 24`)"
            )
        return value

    @field_validator("TWILIO_ACCOUNT_SID")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not ACCOUNT_SID.match(value):
            raise ValueError("must be AC followed by 32 hexadecimal characters")
        return value

    @field_validator("TWILIO_WHATSAPP_NUMBER", "TWILIO_PHONE_NUMBER")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if not value:
            return None
        number = strip_channel_prefix(value.strip())
        if not E164.match(number):
            raise ValueError("must be an E.164 number like +14155550100")
        return number

    @field_validator("LOG_LEVEL", "WHATSAPP_LOG_LEVEL", "SMS_LOG_LEVEL")
    @classmethod
    def _level(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator(
        "RATE_LIMIT_PER_SENDER", "RATE_LIMIT_PER_ACCOUNT", "RATE_LIMIT_FLOOD", "RATE_LIMIT_API"
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        value = value.strip().lower()
        if value == "off":
            return value
        try:
            item = parse(value)
        except ValueError:
            item = None
        if item is None or item.amount < 1:
            raise ValueError(f'must look like "20/minute" (or "off"), got {value!r}')
        return value

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
            for origin in origins:
                if origin != "*":
                    _check_url(origin)
            return origins
        return value

    @field_validator("ALLOWED_HOSTS", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            hosts = [str(host).strip().lower() for host in value if str(host).strip()]
            for host in hosts:
                if not HOST_PATTERN.match(host):
                    raise ValueError(
                        "must be comma-separated host names like platica.example.com or "
                        f"*.example.com (no scheme, port or path), or *; got {host!r}"
                    )
            return hosts
        return value

    @model_validator(mode="after")
    def _twilio_pair(self) -> Settings:
        if bool(self.TWILIO_ACCOUNT_SID) != bool(self.TWILIO_AUTH_TOKEN):
            missing = "TWILIO_AUTH_TOKEN" if self.TWILIO_ACCOUNT_SID else "TWILIO_ACCOUNT_SID"
            raise ValueError(f"{missing}: must be set together with the other Twilio credential")
        if self.twilio_configured and not self.PUBLIC_BASE_URL:
            # A worker never sees a webhook: without this, replies would go out with no
            # StatusCallback and their delivery would never be tracked.
            raise ValueError(
                "PUBLIC_BASE_URL: required when TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are set: "
                "the public URL Twilio calls (e.g. https://abc123.ngrok-free.app), for "
                "signatures and delivery status callbacks"
            )
        return self

    @property
    def twilio_configured(self) -> bool:
        """Real Twilio credentials are set: signatures are checked and replies really sent."""
        return self.TWILIO_AUTH_TOKEN is not None

    @property
    def ignored_seed_secrets(self) -> list[str]:
        """The original services' webhook secrets that are set, and protect nothing here."""
        return [name for name in SEED_SECRETS if getattr(self, name) is not None]

    @property
    def trusted_hosts(self) -> list[str]:
        """The Host header values requests may carry: PUBLIC_BASE_URL's host, the loopback's
        names and ALLOWED_HOSTS; ["*"] when ALLOWED_HOSTS has "*"."""
        if "*" in self.ALLOWED_HOSTS:
            return ["*"]
        hosts = []
        public = urlsplit(self.PUBLIC_BASE_URL).hostname if self.PUBLIC_BASE_URL else None
        if public:
            hosts.append(f"[{public}]" if ":" in public else public)
        hosts += ["localhost", "127.0.0.1", "::1", "[::1]"]
        return hosts + [host for host in self.ALLOWED_HOSTS if host not in hosts]

    @property
    def status_callback_url(self) -> str | None:
        """Where Twilio reports the delivery of what Plática sends: PUBLIC_BASE_URL's
        /webhook/status (never learned from requests, whose Host anyone can set)."""
        return f"{self.PUBLIC_BASE_URL}/webhook/status" if self.PUBLIC_BASE_URL else None

    @property
    def log_level(self) -> str:
        """LOG_LEVEL, else the seed-era variables (DEBUG wins when either asks for it)."""
        if self.LOG_LEVEL:
            return self.LOG_LEVEL
        if self.WHATSAPP_ENABLE_DEBUG or self.SMS_ENABLE_DEBUG:
            return "DEBUG"
        seeds = [lvl for lvl in (self.WHATSAPP_LOG_LEVEL, self.SMS_LOG_LEVEL) if lvl]
        return min(seeds, key=LOG_LEVELS.index) if seeds else "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


def describe_errors(error: ValidationError) -> str:
    """One line per bad variable, naming it, without echoing secrets."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "\n".join(f"Invalid configuration: {line}" for line in lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation failures into a ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own with load_settings)."""
    return load_settings()
