"""The message senders: TwilioSender over real HTTP against FakeTwilio (the official SDK's async
client), and the dry run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from platica.channels.sender import (
    DryRunSender,
    OutgoingMessage,
    SendFailed,
    SentMessage,
    TwilioSender,
    create_sender,
)
from platica.config import Settings
from platica.errors import RetryableError
from platica.models import Channel, MessageStatus, utcnow
from tests.conftest import free_port, make_settings
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER
from tests.fakes import FakeTwilio

CALLBACK = "https://platica.example.com/webhook/status"


def sms(body: str = "Abrimos de 9 a 14.") -> OutgoingMessage:
    return OutgoingMessage(
        channel=Channel.sms, to=CONTACT, from_=SMS_NUMBER, body=body, status_callback=CALLBACK
    )


def whatsapp(body: str = "¡Claro! Abrimos el domingo.") -> OutgoingMessage:
    return OutgoingMessage(
        channel=Channel.whatsapp,
        to=CONTACT,
        from_=WHATSAPP_NUMBER,
        body=body,
        status_callback=CALLBACK,
    )


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Settings need a DATABASE_URL; nothing here opens it."""
    return f"sqlite+aiosqlite:///{tmp_path}/platica.db"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def settings(database_url: str, fake: FakeTwilio) -> Settings:
    return make_settings(database_url, TWILIO_API_BASE_URL=fake.url)


async def send(settings: Settings, message: OutgoingMessage) -> SentMessage:
    """`message` sent by a new TwilioSender, closed afterwards."""
    sender = TwilioSender(settings)
    try:
        return await sender.send(message)
    finally:
        await sender.aclose()


async def send_failing(settings: Settings, fake: FakeTwilio, behaviour: str) -> Exception:
    """The exception TwilioSender raises when the fake answers the creation with `behaviour`."""
    fake.fail_next(behaviour)
    with pytest.raises((RetryableError, SendFailed)) as caught:
        await send(settings, sms())
    return caught.value


class TestTwilioSender:
    async def test_whatsapp_send_returns_the_sid_and_queued(self, settings, fake):
        sent = await send(settings, whatsapp())

        [recorded] = fake.sent
        assert sent.sid == recorded["sid"]
        assert sent.sid is not None
        assert sent.sid.startswith("SM")
        assert sent.status is MessageStatus.queued
        assert recorded["to"] == f"whatsapp:{CONTACT}"
        assert recorded["from"] == f"whatsapp:{WHATSAPP_NUMBER}"
        assert recorded["body"] == "¡Claro! Abrimos el domingo."
        assert recorded["status_callback"] == CALLBACK

    async def test_sms_is_sent_without_a_prefix(self, settings, fake):
        sent = await send(settings, sms())

        [recorded] = fake.sent
        assert sent.sid == recorded["sid"]
        assert (recorded["to"], recorded["from"]) == (CONTACT, SMS_NUMBER)
        assert recorded["body"] == "Abrimos de 9 a 14."
        assert recorded["status_callback"] == CALLBACK

    async def test_without_a_callback_none_is_sent(self, settings, fake):
        message = OutgoingMessage(channel=Channel.sms, to=CONTACT, from_=SMS_NUMBER, body="Hola")
        await send(settings, message)

        [attempt] = fake.attempts
        assert "StatusCallback" not in attempt

    async def test_rate_limit_is_retryable_and_not_ambiguous(self, settings, fake):
        error = await send_failing(settings, fake, "429")

        assert isinstance(error, RetryableError)
        assert error.ambiguous is False
        # Our job retries with its own backoff: the SDK must not have tried again.
        assert len(fake.attempts) == 1

    async def test_server_error_is_retryable_and_ambiguous(self, settings, fake):
        error = await send_failing(settings, fake, "500")

        assert isinstance(error, RetryableError)
        assert error.ambiguous is True
        assert len(fake.attempts) == 1

    async def test_unsubscribed_recipient_fails_for_good(self, settings, fake):
        error = await send_failing(settings, fake, "21610")

        assert isinstance(error, SendFailed)
        assert error.code == 21610
        assert "unsubscribed" in error.message
        assert fake.sent == []

    async def test_invalid_number_fails_for_good(self, settings, fake):
        error = await send_failing(settings, fake, "21211")

        assert isinstance(error, SendFailed)
        assert error.code == 21211

    async def test_timeout_is_ambiguous_and_the_message_is_found_later(
        self, database_url, fake, monkeypatch
    ):
        monkeypatch.setattr("platica.channels.sender.TWILIO_TIMEOUT_SECONDS", 0.5)
        settings = make_settings(database_url, TWILIO_API_BASE_URL=fake.url)
        fake.hang_seconds = 5
        fake.fail_next("timeout")
        before = utcnow() - timedelta(seconds=1)
        message = whatsapp()
        sender = TwilioSender(settings)
        try:
            started = time.monotonic()
            with pytest.raises(RetryableError) as caught:
                await sender.send(message)
            elapsed = time.monotonic() - started

            found = await sender.find_sent(message, since=before)
            other = await sender.find_sent(whatsapp("Otro mensaje"), since=before)
        finally:
            await sender.aclose()

        assert caught.value.ambiguous is True
        assert elapsed < 3
        # The fake accepted the message before the client gave up, as Twilio may.
        [recorded] = fake.sent
        assert [candidate.sid for candidate in found] == [recorded["sid"]]
        assert other == []

    async def test_find_sent_finds_a_template_whatever_text_twilio_shows(self, settings, fake):
        """A template goes by its ContentSid: the text Twilio lists (its own rendering) need not
        be our copy of the template's."""
        before = utcnow() - timedelta(seconds=1)
        # Twilio's version of the text differs from ours (edited since the last sync, say).
        content_sid = fake.add_content("pedido_listo", "¡Hola {{1}}! Su pedido {{2}} ya está listo")
        template = OutgoingMessage(
            channel=Channel.whatsapp,
            to=CONTACT,
            from_=WHATSAPP_NUMBER,
            body="Hola Ana, tu pedido A-17 está listo",
            content_sid=content_sid,
            content_variables={"1": "Ana", "2": "A-17"},
        )
        sender = TwilioSender(settings)
        try:
            await sender.send(template)
            found = await sender.find_sent(template, since=before)
            free_text = await sender.find_sent(whatsapp(template.body + "!"), since=before)
        finally:
            await sender.aclose()

        assert fake.sent[0]["body"] == "¡Hola Ana! Su pedido A-17 ya está listo"
        assert [candidate.sid for candidate in found] == [fake.sent[0]["sid"]]
        assert free_text == []

    async def test_find_sent_ignores_messages_to_someone_else(self, settings, fake):
        before = utcnow() - timedelta(seconds=1)
        sender = TwilioSender(settings)
        try:
            await sender.send(sms("Hola"))
            elsewhere = OutgoingMessage(
                channel=Channel.sms, to="+34600999888", from_=SMS_NUMBER, body="Hola"
            )
            found = await sender.find_sent(elsewhere, since=before)
        finally:
            await sender.aclose()

        assert found == []

    async def test_find_sent_ignores_messages_created_before_the_attempt(self, settings, fake):
        """The same text sent a minute earlier (a fallback, a HELP answer) is not this attempt:
        only messages created at or after `since`, less Twilio's one-second rounding, are."""
        sender = TwilioSender(settings)
        try:
            await sender.send(sms("Hola"))
            found = await sender.find_sent(sms("Hola"), since=utcnow() + timedelta(seconds=5))
        finally:
            await sender.aclose()

        assert found == []

    async def test_find_sent_allows_for_twilios_whole_seconds(self, settings, fake):
        """Twilio's date_created drops the fraction of a second: a message created just after
        `since` may show a date just before it."""
        sender = TwilioSender(settings)
        try:
            since = utcnow()
            await sender.send(sms("Hola"))
            found = await sender.find_sent(sms("Hola"), since=since)
        finally:
            await sender.aclose()

        assert [candidate.sid for candidate in found] == [fake.sent[0]["sid"]]

    async def test_find_sent_lists_every_candidate_oldest_first(self, settings, fake):
        sender = TwilioSender(settings)
        try:
            since = utcnow() - timedelta(seconds=1)
            for _ in range(3):
                await sender.send(sms("Hola"))
            found = await sender.find_sent(sms("Hola"), since=since)
        finally:
            await sender.aclose()

        assert [candidate.sid for candidate in found] == [m["sid"] for m in fake.sent]

    async def test_unreachable_twilio_is_retryable(self, database_url):
        closed = f"http://127.0.0.1:{free_port()}"
        sender = TwilioSender(make_settings(database_url, TWILIO_API_BASE_URL=closed))
        try:
            with pytest.raises(RetryableError, match="could not be reached"):
                await sender.send(sms())
        finally:
            await sender.aclose()

    async def test_find_sent_on_unreachable_twilio_is_retryable(self, database_url):
        closed = f"http://127.0.0.1:{free_port()}"
        sender = TwilioSender(make_settings(database_url, TWILIO_API_BASE_URL=closed))
        try:
            with pytest.raises(RetryableError):
                await sender.find_sent(sms(), since=utcnow())
        finally:
            await sender.aclose()


class TestDryRunSender:
    async def test_send_returns_dry_run_without_a_sid(self):
        sender = DryRunSender()

        sent = await sender.send(whatsapp())

        assert sent.sid is None
        assert sent.status is MessageStatus.dry_run
        assert await sender.find_sent(whatsapp(), since=utcnow()) == []
        await sender.aclose()


class TestCreateSender:
    async def test_dry_run_without_twilio_credentials(self, database_url):
        settings = make_settings(database_url, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)

        sender = create_sender(settings)

        assert isinstance(sender, DryRunSender)
        await sender.aclose()

    async def test_twilio_with_credentials(self, settings):
        sender = create_sender(settings)

        assert isinstance(sender, TwilioSender)
        await sender.aclose()
