"""docs/troubleshooting.md's cases, reproduced over real HTTP: what the guide says the customer
gets, what the log and the webhook log say, and that the guide still quotes those very words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Database, LiveServer, make_settings
from tests.factories import CONTACT, inbound_form, post_signed
from tests.logs import log_events
from tests.polling import wait_for
from tests.stack import Stack, live_stack

GUIDE = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
# The guide as flowing text: its lines wrap quotes anywhere.
GUIDE_TEXT = " ".join(GUIDE.split())
PUBLIC = "https://platica.panaderiasol.es"


def in_guide(text: str) -> str:
    """`text`, after checking the guide quotes it word for word."""
    assert " ".join(text.split()) in GUIDE_TEXT, (
        f"docs/troubleshooting.md no longer quotes {text!r}"
    )
    return text


@pytest.fixture
def wrong_key_stack(sqlite_url, live_server) -> Iterator[Stack]:
    """The fakes behind a live server whose OPENAI_API_KEY the fake OpenAI refuses."""
    wrong = {"OPENAI_API_KEY": "sk-wrong-0123456789", "LOG_LEVEL": "INFO"}
    with live_stack(sqlite_url, live_server, **wrong) as stack:
        stack.openai.api_key = "sk-the-right-one-0123456789"
        yield stack


class TestQuotedRefusals:
    def test_the_reasons_stored_on_refused_messages_are_quoted(self):
        from platica.channels.sender import UNSUBSCRIBED
        from platica.outreach.window import OUTSIDE_WINDOW, OUTSIDE_WINDOW_ERROR
        from platica.replies.sending import OPTED_OUT_ERROR

        in_guide(OUTSIDE_WINDOW_ERROR)
        in_guide(OPTED_OUT_ERROR)
        in_guide(f"**{OUTSIDE_WINDOW}: outside WhatsApp's 24-hour window.**")
        in_guide(f"**{UNSUBSCRIBED}: the recipient replied STOP.**")


class TestWrongOpenAIKey:
    def test_the_customer_gets_the_fallback_and_the_note_says_why(self, wrong_key_stack):
        stack = wrong_key_stack
        stack.configure(fallback_message="Ahora no podemos responder; le escribimos pronto.")
        with log_events() as logged:
            stack.send(body="Hola, ¿tienen tarta de queso?")
            wait_for(lambda: stack.settled() and stack.twilio.sent, "the fallback to be sent")
        [sent] = stack.sent_to(CONTACT)
        assert sent["body"] == "Ahora no podemos responder; le escribimos pronto."
        why = in_guide("the LLM refused the request (401 invalid_api_key)")
        note = stack.database.scalar("SELECT note FROM messages WHERE direction = 'inbound'")
        assert note == f"fallback sent: {why}"
        assert [event["error"] for event in logged.named("reply.llm_failed")] == [why]
        [stored] = logged.named("reply.stored")
        assert stored["fallback"] is True


class TestSignatureBehindAProxy:
    def test_a_signature_over_the_internal_url_is_refused_and_the_log_shows_the_public_one(
        self, sqlite_url, live_server
    ):
        server: LiveServer = live_server(make_settings(sqlite_url, PUBLIC_BASE_URL=PUBLIC))
        form = inbound_form(body="Hola")
        with log_events() as logged, httpx.Client(timeout=10) as client:
            # Signed over the address Plática is reached at: what a proxy shows it, not what
            # Twilio called.
            response = post_signed(client, server.url, "/webhook/sms", form)
        assert response.status_code == 403
        assert response.json()["error"] == {
            "code": in_guide("invalid_signature"),
            "message": in_guide("X-Twilio-Signature does not match"),
        }
        [rejected] = logged.named(in_guide("webhook.rejected"))
        checked = f"{PUBLIC}/webhook/sms"
        assert rejected["signed_url"] == checked
        assert rejected["reason"] == in_guide(
            f"X-Twilio-Signature does not match (checked over {checked}: PUBLIC_BASE_URL + path)"
        )
        database = Database(sqlite_url)
        try:
            assert database.count("messages") == 0
            assert database.scalar("SELECT reason FROM webhook_logs") == rejected["reason"]
        finally:
            database.engine.dispose()


class TestUnknownNumber:
    def test_a_number_no_account_owns_gets_404_naming_the_fix(self, sqlite_url, live_server):
        server: LiveServer = live_server(make_settings(sqlite_url))
        form = inbound_form(to="+34911222334")
        with log_events() as logged, httpx.Client(timeout=10) as client:
            response = post_signed(client, server.url, "/webhook/sms", form)
        assert response.status_code == 404
        [rejected] = logged.named("webhook.rejected")
        reason = (
            "no account owns +3491*****34 on sms; add it with `platica accounts create` "
            "or TWILIO_PHONE_NUMBER"
        )
        assert rejected["reason"] == in_guide(reason)


class TestStartupErrors:
    """The guide's table of start-up errors quotes what the settings' check prints."""

    @staticmethod
    def refused(**values: str) -> str:
        from platica.config import ConfigError, load_settings

        with pytest.raises(ConfigError) as error:
            load_settings(_env_file=None, **values)
        return str(error.value)

    def test_twilio_without_public_base_url(self):
        printed = self.refused(TWILIO_ACCOUNT_SID="AC" + "a1" * 16, TWILIO_AUTH_TOKEN="t" * 32)
        quoted = in_guide(
            "Invalid configuration: PUBLIC_BASE_URL: required when "
            "TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are set: "
        )
        assert printed.startswith(quoted)

    def test_one_twilio_credential_alone(self):
        printed = self.refused(TWILIO_ACCOUNT_SID="AC" + "a1" * 16)
        assert printed == in_guide(
            "Invalid configuration: TWILIO_AUTH_TOKEN: must be set together with the other "
            "Twilio credential"
        )

    def test_a_number_not_in_e164(self):
        printed = self.refused(TWILIO_PHONE_NUMBER="911 22 23 34")
        assert printed == in_guide(
            "Invalid configuration: TWILIO_PHONE_NUMBER: must be an E.164 number like +14155550100"
        )

    def test_a_placeholder_token(self):
        printed = self.refused(
            TWILIO_ACCOUNT_SID="AC" + "a1" * 16,
            TWILIO_AUTH_TOKEN="your_auth_token_here",
            PUBLIC_BASE_URL=PUBLIC,
        )
        assert printed == in_guide(
            "Invalid configuration: TWILIO_AUTH_TOKEN: is a placeholder, not a real secret"
        )


class TestDoctorExample:
    def test_the_guide_shows_what_doctor_prints_for_a_wrong_key_and_a_missing_number(
        self, sqlite_url, monkeypatch
    ):
        from typer.testing import CliRunner

        from platica.cli import app
        from platica.config import get_settings
        from tests.factories import ACCOUNT_SID, AUTH_TOKEN
        from tests.fakes import FakeOpenAI, FakeTwilio

        with FakeOpenAI(api_key="sk-the-right-one-0123456789") as openai, FakeTwilio() as twilio:
            for name, value in {
                "DATABASE_URL": sqlite_url,
                "OPENAI_API_KEY": "sk-wrong-0123456789abcdef",
                "OPENAI_BASE_URL": openai.url,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "TWILIO_PHONE_NUMBER": "+34911222334",
                "TWILIO_API_BASE_URL": twilio.url,
                "TWILIO_MESSAGING_BASE_URL": twilio.url,
                "PUBLIC_BASE_URL": PUBLIC,
            }.items():
                monkeypatch.setenv(name, value)
            get_settings.cache_clear()
            result = CliRunner().invoke(app, ["doctor"])
        assert result.exit_code == 1
        failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
        assert len(failed) == 2, result.stdout
        for line in [*failed, "✓ settings"]:
            in_guide(line)
