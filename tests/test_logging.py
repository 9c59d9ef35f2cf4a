"""Logging: phone numbers masked, JSON output one valid object per line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from platica.config import load_settings
from platica.logging import configure_logging, get_logger, mask_phone

NUMBER = "+14155238886"
QUIETED = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "twilio",
    "httpx",
    "httpx2",
    "openai",
    "alembic.runtime.plugins",
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
        for name in QUIETED
    }
    saved_propagate = {name: logging.getLogger(name).propagate for name in QUIETED}
    yield
    root.handlers[:], root.level = saved_root[0], saved_root[1]
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = saved_propagate[name]
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestMaskPhone:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("+14155238886", "+1415*****86", id="e164"),
            pytest.param("whatsapp:+14155238886", "whatsapp:+1415*****86", id="whatsapp"),
            pytest.param(
                "Call me at +34600111222 today.", "Call me at +3460*****22 today.", id="sentence"
            ),
            pytest.param(
                "from +14155238886 to +34600111222",
                "from +1415*****86 to +3460*****22",
                id="two-numbers",
            ),
            pytest.param("14155238886", "1415*****86", id="without-plus"),
        ],
    )
    def test_masks(self, text: str, expected: str) -> None:
        assert mask_phone(text) == expected

    def test_masked_digits_gone(self) -> None:
        assert "5523888" not in mask_phone("sender=whatsapp:+14155238886")

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("SM0123456789abcdef0123456789abcdef", id="message-sid"),
            pytest.param("SM" + "1234567890" * 3 + "12", id="all-digit-sid"),
            pytest.param("AC" + "a1" * 16, id="account-sid"),
            pytest.param("2026-11-22T03:04:16.244903Z", id="iso-timestamp"),
            pytest.param("2026-11-22T03:04:16.244903+00:00", id="iso-timestamp-offset"),
            pytest.param("550e8400-e29b-41d4-a716-446655440000", id="uuid"),
            pytest.param("12345678-1234-1234-1234-123456789012", id="all-digit-uuid"),
            pytest.param("http://127.0.0.1:8000/webhook/sms", id="port"),
            pytest.param("postgresql://postgres@localhost:5432/platica", id="pg-port"),
            pytest.param("answered in 12345 ms, attempt 3", id="short-numbers"),
        ],
    )
    def test_leaves_alone(self, text: str) -> None:
        assert mask_phone(text) == text


class TestConfigureLogging:
    def test_phone_in_value_masked_in_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))

        get_logger("platica.test").info("webhook.accepted", sender=f"whatsapp:{NUMBER}")

        err = capsys.readouterr().err
        assert NUMBER not in err
        [event] = json_lines(err)
        assert event["event"] == "webhook.accepted"
        assert event["sender"] == "whatsapp:+1415*****86"
        assert event["level"] == "info"

    def test_phone_in_nested_value_masked(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))

        get_logger("platica.test").info("reply.sent", to={"numbers": [NUMBER]})

        [event] = json_lines(capsys.readouterr().err)
        assert event["to"] == {"numbers": ["+1415*****86"]}

    def test_phone_masked_in_console(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings())

        get_logger("platica.test").info("webhook.accepted", sender=NUMBER)

        err = capsys.readouterr().err
        assert "webhook.accepted" in err
        assert "+1415*****86" in err
        assert NUMBER not in err

    def test_json_lines_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))
        log = get_logger("platica.test")

        log.info("first", n=1)
        logging.getLogger("uvicorn.error").warning("stdlib line from %s", NUMBER)
        try:
            raise RuntimeError("boom\nacross lines")
        except RuntimeError:
            log.exception("failed")

        events = json_lines(capsys.readouterr().err)
        assert [event["event"] for event in events] == [
            "first",
            "stdlib line from +1415*****86",
            "failed",
        ]
        assert "RuntimeError: boom" in events[2]["exception"]
        assert all("timestamp" in event for event in events)

    def test_debug_hidden_at_info(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))
        log = get_logger("platica.test")

        log.debug("webhook.body", body="secret words")
        log.info("webhook.accepted")

        assert [event["event"] for event in json_lines(capsys.readouterr().err)] == [
            "webhook.accepted"
        ]

    def test_debug_shown_with_seed_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json", WHATSAPP_ENABLE_DEBUG=True))

        get_logger("platica.test").debug("webhook.body", body="hola")

        [event] = json_lines(capsys.readouterr().err)
        assert event["body"] == "hola"

    def test_access_lines_for_the_api_not_for_webhooks(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))
        access = logging.getLogger("uvicorn.access")
        line = '%s - "%s %s HTTP/%s" %d'

        access.info(line, "127.0.0.1:5000", "POST", "/webhook/sms", "1.1", 200)
        access.info(line, "127.0.0.1:5000", "GET", "/api/sms/stats", "1.1", 200)

        events = json_lines(capsys.readouterr().err)
        assert [event["event"] for event in events] == [
            '127.0.0.1:5000 - "GET /api/sms/stats HTTP/1.1" 200'
        ]

    def test_per_request_chatter_of_the_http_clients_is_quiet_at_info(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))

        # httpx2: the HTTP client the openai SDK logs each request through.
        for name in ("openai", "httpx", "httpx2", "twilio"):
            logging.getLogger(f"{name}.client").info("HTTP Request: POST ...")
        logging.getLogger("httpx2.client").warning("Connection failed")

        assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["Connection failed"]


class TestExceptionsMasked:
    """Item 16 of issue 12: a traceback's text goes through the same masking as the event."""

    def raise_with_number(self) -> None:
        raise ValueError(f"could not send to whatsapp:{NUMBER}")

    @pytest.mark.parametrize("log_format", ["console", "json"])
    @pytest.mark.parametrize(
        ("logger", "event"),
        [
            pytest.param(lambda: get_logger("platica.test"), "reply.failed", id="structlog"),
            pytest.param(
                lambda: logging.getLogger("uvicorn.error"),
                "Exception in ASGI application",
                id="stdlib",
            ),
        ],
    )
    def test_exception_text_is_masked(
        self,
        logger: Callable[[], Any],
        event: str,
        log_format: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        configure_logging(load_settings(LOG_FORMAT=log_format))

        try:
            self.raise_with_number()
        except ValueError:
            logger().exception(event)

        err = capsys.readouterr().err
        assert event in err
        assert "ValueError: could not send to whatsapp:+1415*****86" in err
        assert NUMBER not in err

    def test_json_exception_is_one_field(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging(load_settings(LOG_FORMAT="json"))

        try:
            self.raise_with_number()
        except ValueError:
            logging.getLogger("platica.stdlib").exception("failed")

        [event] = json_lines(capsys.readouterr().err)
        assert "ValueError: could not send" in event["exception"]
        assert "exc_info" not in event
