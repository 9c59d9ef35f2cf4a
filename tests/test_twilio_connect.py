"""`platica twilio connect`: the real command against FakeTwilio over HTTP (IncomingPhoneNumbers
and the Senders API, through the official SDK): one update, then none; --dry-run changes
nothing; a Sandbox number gets the Console's steps."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from platica.cli import app
from platica.config import get_settings
from platica.models import Channel
from tests.conftest import sqlite_only
from tests.factories import SMS_NUMBER, WHATSAPP_NUMBER
from tests.records import add_account, in_session
from tests.test_doctor import OTHER_SMS_NUMBER, PUBLIC, Setup, failures, run_doctor
from tests.test_doctor import setup as setup  # the fixture

SMS_URL = PUBLIC + "/webhook/sms"
WHATSAPP_URL = PUBLIC + "/webhook/whatsapp"
STATUS_URL = PUBLIC + "/webhook/status"

pytestmark = sqlite_only


def run_connect(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, ["twilio", "connect", *args])


class TestSmsNumber:
    def test_connects_once_then_finds_it_connected(self, setup: Setup) -> None:
        sid = setup.twilio.add_number(SMS_NUMBER, sms_url="https://old-host.example.com/sms")

        result = run_connect()

        assert result.exit_code == 0, result.output
        assert "SMS +1500*****06 (TWILIO_PHONE_NUMBER):\n" in result.stdout
        assert f"  SmsUrl: https://old-host.example.com/sms → {SMS_URL}\n" in result.stdout
        assert f"  StatusCallback: (unset) → {STATUS_URL}\n" in result.stdout
        assert "  SmsMethod: POST (unchanged)\n" in result.stdout
        assert setup.twilio.number_updates == [
            {
                "sid": sid,
                "params": {"SmsUrl": SMS_URL, "SmsMethod": "POST", "StatusCallback": STATUS_URL},
            }
        ]
        [number] = setup.twilio.numbers
        assert (number["sms_url"], number["status_callback"]) == (SMS_URL, STATUS_URL)

        again = run_connect()

        assert again.exit_code == 0, again.output
        assert "SMS +1500*****06 (TWILIO_PHONE_NUMBER): already connected" in again.stdout
        assert len(setup.twilio.number_updates) == 1

    def test_dry_run_shows_the_change_and_makes_none(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER)

        result = run_connect("--dry-run")

        assert result.exit_code == 0, result.output
        assert f"  SmsUrl: (unset) → {SMS_URL}\n" in result.stdout
        assert "  dry run: nothing changed" in result.stdout
        assert setup.twilio.number_updates == []
        assert [n["sms_url"] for n in setup.twilio.numbers] == [""]

    def test_an_sms_application_is_removed(self, setup: Setup) -> None:
        app_sid = "AP" + "0" * 32
        setup.twilio.add_number(
            SMS_NUMBER, sms_url=SMS_URL, status_callback=STATUS_URL, sms_application_sid=app_sid
        )

        result = run_connect()

        assert result.exit_code == 0, result.output
        assert f"  SmsApplicationSid: {app_sid} → (unset)" in result.stdout
        [update] = setup.twilio.number_updates
        assert update["params"]["SmsApplicationSid"] == ""

    def test_the_accounts_numbers_too(self, setup: Setup, database_url: str) -> None:
        setup.twilio.add_number(SMS_NUMBER, sms_url=SMS_URL, status_callback=STATUS_URL)
        other = setup.twilio.add_number(OTHER_SMS_NUMBER)
        in_session(
            database_url,
            lambda session: add_account(
                session, "Panadería", numbers={Channel.sms: OTHER_SMS_NUMBER}
            ),
        )

        result = run_connect()

        assert result.exit_code == 0, result.output
        assert "SMS +1500*****10 (account Panadería):\n" in result.stdout
        assert [update["sid"] for update in setup.twilio.number_updates] == [other]

    def test_a_number_not_on_the_account(self, setup: Setup) -> None:
        result = run_connect()

        assert result.exit_code == 1
        assert "SMS +1500*****06 (TWILIO_PHONE_NUMBER): not on the Twilio account" in (
            result.stdout
        )
        assert setup.twilio.number_updates == []

    def test_then_the_doctor_finds_nothing_wrong(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER, sms_url="https://old-host.example.com/sms")
        setup.twilio.add_sender(WHATSAPP_NUMBER)
        assert len(failures(run_doctor())) == 2

        assert run_connect().exit_code == 0

        result = run_doctor()
        assert result.exit_code == 0, result.output


class TestWhatsAppSender:
    def test_sets_the_webhook_through_the_senders_api_once(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER, sms_url=SMS_URL, status_callback=STATUS_URL)
        sid = setup.twilio.add_sender(WHATSAPP_NUMBER, callback_url="https://old-host.example.com")

        result = run_connect()

        assert result.exit_code == 0, result.output
        assert f"  callback_url: https://old-host.example.com → {WHATSAPP_URL}" in result.stdout
        assert f"  status_callback_url: (unset) → {STATUS_URL}" in result.stdout
        assert setup.twilio.sender_updates == [
            {
                "sid": sid,
                "body": {
                    "webhook": {
                        "callback_url": WHATSAPP_URL,
                        "callback_method": "POST",
                        "status_callback_url": STATUS_URL,
                        "status_callback_method": "POST",
                    }
                },
            }
        ]
        assert run_connect().exit_code == 0
        assert len(setup.twilio.sender_updates) == 1
        assert setup.twilio.number_updates == []

    def test_dry_run_changes_no_sender(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER, sms_url=SMS_URL, status_callback=STATUS_URL)
        setup.twilio.add_sender(WHATSAPP_NUMBER)

        result = run_connect("--dry-run")

        assert result.exit_code == 0, result.output
        assert f"  callback_url: (unset) → {WHATSAPP_URL}" in result.stdout
        assert setup.twilio.sender_updates == []

    def test_the_sandbox_gets_the_console_steps(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER, sms_url=SMS_URL, status_callback=STATUS_URL)

        result = run_connect()

        assert result.exit_code == 0, result.output
        assert "WhatsApp +1415*****86 (TWILIO_WHATSAPP_NUMBER): not a sender" in result.stdout
        assert f"“When a message comes in” to {WHATSAPP_URL} (POST)" in result.stdout
        assert setup.twilio.sender_updates == []


class TestRefusals:
    def test_without_public_base_url(self, setup: Setup) -> None:
        setup.monkeypatch.delenv("PUBLIC_BASE_URL")

        result = run_connect()

        assert result.exit_code == 2
        assert "PUBLIC_BASE_URL" in result.stderr
        assert setup.twilio.request_log == []

    def test_without_twilio_credentials(self, setup: Setup) -> None:
        setup.monkeypatch.delenv("TWILIO_ACCOUNT_SID")
        setup.monkeypatch.delenv("TWILIO_AUTH_TOKEN")

        result = run_connect()

        assert result.exit_code == 2
        assert result.stderr.startswith("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: required")

    def test_refused_credentials(self, setup: Setup) -> None:
        setup.twilio.add_number(SMS_NUMBER)
        setup.set("TWILIO_AUTH_TOKEN", "fedcba9876543210fedcba9876543210")

        result = run_connect()

        assert result.exit_code == 1
        assert "Error: Twilio refused the credentials (401)" in result.stderr
        assert setup.twilio.number_updates == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_no_number_configured(setup: Setup, dry_run: bool) -> None:
    setup.monkeypatch.delenv("TWILIO_PHONE_NUMBER")
    setup.monkeypatch.delenv("TWILIO_WHATSAPP_NUMBER")

    result = run_connect(*(["--dry-run"] if dry_run else []))

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no number to connect")
