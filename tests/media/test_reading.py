"""Voice notes, images, documents and locations end to end: a signed webhook to a live server,
the media fetched from the fake Twilio (behind basic auth, redirecting to a storage host), voice
notes transcribed by the fake OpenAI through the official SDK, and what the model was told."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.media.samples import jpeg, ogg_opus, pdf, png
from tests.polling import wait_for
from tests.stack import Stack, live_stack

VOICE_NOTE = "Hola, ¿a qué hora abren mañana el local del centro?"


@pytest.fixture
def stack(database_url, live_server) -> Iterator[Stack]:
    """On SQLite and PostgreSQL: the cases that store and read media rows."""
    with live_stack(database_url, live_server) as created:
        yield created


@pytest.fixture
def sqlite_stack(sqlite_url, live_server) -> Iterator[Stack]:
    """SQLite only: failure cases, whose rules do not depend on the database."""
    with live_stack(sqlite_url, live_server) as created:
        yield created


def media_form(*items: tuple[str, str]) -> dict[str, str]:
    """Twilio's media fields for (url, content type) items."""
    form = {"NumMedia": str(len(items))}
    for index, (url, content_type) in enumerate(items):
        form[f"MediaUrl{index}"] = url
        form[f"MediaContentType{index}"] = content_type
    return form


def send_media(
    stack: Stack, *items: tuple[bytes, str], body: str = "", channel: str = "whatsapp"
) -> list[str]:
    """Register the items with the fake Twilio and send one message carrying them."""
    urls = [stack.twilio.add_media(content, content_type) for content, content_type in items]
    form = media_form(*zip(urls, [content_type for _, content_type in items], strict=True))
    stack.send(channel, body=body, **form)
    return urls


def answered(stack: Stack) -> list[Any]:
    """Every message settled, with its replies sent; the outbound messages."""
    wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply sent")
    return stack.outbound()


def last_user_content(stack: Stack) -> Any:
    """What the model was given as the contact's last message."""
    [request] = stack.openai.requests
    return [m for m in request["messages"] if m["role"] == "user"][-1]["content"]


def media_rows(stack: Stack) -> list[Any]:
    return stack.database.rows(
        "SELECT kind, state, text, error, size_bytes, sha256, duration_seconds, attempts"
        " FROM media ORDER BY id"
    )


class TestVoiceNotes:
    def test_its_transcript_reaches_the_model_as_the_users_text(self, stack):
        note = ogg_opus(4.0)
        stack.openai.transcribe_as(note, VOICE_NOTE)

        send_media(stack, (note, "audio/ogg"))
        [reply] = answered(stack)

        [transcription] = stack.openai.transcriptions
        assert transcription["filename"] == "voice.ogg"
        assert transcription["language"] == "es"
        assert last_user_content(stack) == f"[voice note] {VOICE_NOTE}"
        assert VOICE_NOTE in reply.body  # the fake echoes what it was told
        [row] = media_rows(stack)
        assert (row.kind, row.state, row.text, row.error) == (
            "audio",
            "understood",
            VOICE_NOTE,
            None,
        )
        assert row.size_bytes == len(note)
        assert row.sha256 == hashlib.sha256(note).hexdigest()
        assert row.duration_seconds == pytest.approx(4.0, abs=0.1)
        # The credentials went to Twilio only, never to the storage host it redirects to.
        assert stack.twilio.media_storage.requests
        assert all("authorization" not in r["headers"] for r in stack.twilio.media_storage.requests)

    def test_a_burst_of_voice_notes_gets_one_answer(self, stack):
        stack.configure(debounce_seconds=1)
        notes = [ogg_opus(1.0 + n) for n in range(3)]
        texts = ["Buenas tardes", "quería saber si tienen tortillas", "y a cuánto el kilo"]
        urls = []
        for note, text in zip(notes, texts, strict=True):
            stack.openai.transcribe_as(note, text)
            urls.append(stack.twilio.add_media(note, "audio/ogg"))
        for url in urls:
            stack.send("whatsapp", body="", **media_form((url, "audio/ogg")))

        answered(stack)

        assert len(stack.openai.requests) == 1
        users = [m["content"] for m in stack.openai.requests[0]["messages"] if m["role"] == "user"]
        assert users == [f"[voice note] {text}" for text in texts]
        assert len(stack.twilio.sent) == 1
        assert all(row.state == "understood" for row in media_rows(stack))

    def test_a_failing_transcription_still_gets_a_reply_asking_to_type(self, sqlite_stack):
        stack = sqlite_stack
        stack.openai.fail_always("transcription_500")

        send_media(stack, (ogg_opus(2.0), "audio/ogg"))
        [reply] = answered(stack)

        assert last_user_content(stack) == "[voice note that could not be transcribed]"
        assert reply.author == "ai"
        [row] = media_rows(stack)
        assert row.state == "failed"
        assert "500" in row.error


class TestImagesDocumentsLocations:
    def test_an_image_reaches_a_vision_model_as_an_image_part(self, stack):
        stack.configure(vision=True)
        photo = png(64, 48)

        send_media(stack, (photo, "image/png"), body="¿Esta pieza es la correcta?")
        answered(stack)

        text, image = last_user_content(stack)
        assert text == {
            "type": "text",
            "text": "[image, shown below]\n¿Esta pieza es la correcta?",
        }
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        [row] = media_rows(stack)
        assert (row.kind, row.state, row.size_bytes) == ("image", "understood", len(photo))

    def test_without_vision_the_model_is_told_an_image_came(self, sqlite_stack):
        stack = sqlite_stack
        send_media(stack, (jpeg(32, 32), "image/jpeg"), body="Mi recibo")
        answered(stack)

        assert last_user_content(stack) == "[image (you cannot see it)]\nMi recibo"

    def test_a_pdfs_text_reaches_the_model(self, stack):
        document = pdf(["Factura 1234", "Total: 560 MXN"])

        send_media(stack, (document, "application/pdf"))
        answered(stack)

        content = last_user_content(stack)
        assert content.startswith("[document (pdf)]\n")
        assert "Factura 1234" in content
        assert "560 MXN" in content

    def test_a_location_arrives_as_text(self, stack):
        stack.send(
            "whatsapp",
            body="",
            Latitude="19.432608",
            Longitude="-99.133209",
            Label="Zócalo",
            Address="Plaza de la Constitución, CDMX",
        )
        answered(stack)

        assert last_user_content(stack) == (
            "[location: 19.432608, -99.133209, Zócalo, Plaza de la Constitución, CDMX]"
        )
        # Nothing to fetch for a location.
        assert not stack.twilio.media_storage.requests

    def test_a_video_is_named_and_never_fetched(self, sqlite_stack):
        stack = sqlite_stack
        send_media(stack, (b"\x00\x00\x00\x18ftypmp42", "video/mp4"))
        answered(stack)

        assert last_user_content(stack) == "[video/mp4 attachment that cannot be opened]"
        assert not stack.twilio.media_storage.requests
        [row] = media_rows(stack)
        assert row.state == "failed"


class TestFailures:
    def test_media_twilio_lost_is_failed_and_the_reply_goes_once(self, sqlite_stack):
        stack = sqlite_stack
        stack.twilio.fail_always("media:404")

        send_media(stack, (ogg_opus(1.0), "audio/ogg"))
        [reply] = answered(stack)

        [row] = media_rows(stack)
        assert row.state == "failed"
        assert "404" in row.error
        assert not stack.openai.transcriptions
        assert len(stack.twilio.sent) == 1
        assert reply.status != "failed"

    def test_a_media_url_on_another_host_is_never_fetched(self, sqlite_stack):
        stack = sqlite_stack
        elsewhere = "https://evil.example/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"

        stack.send("whatsapp", body="mira", **media_form((elsewhere, "image/jpeg")))
        answered(stack)

        [row] = media_rows(stack)
        assert row.state == "failed"
        assert not stack.twilio.media_storage.requests


class TestDeleteAfterUse:
    def test_twilios_copy_is_deleted_once_understood(self, sqlite_stack):
        stack = sqlite_stack
        stack.configure(delete_media_after_use=True)
        note = ogg_opus(1.5)
        stack.openai.transcribe_as(note, "Gracias")

        [url] = send_media(stack, (note, "audio/ogg"))
        answered(stack)

        wait_for(
            lambda: stack.database.scalar("SELECT deleted_at FROM media") is not None,
            "the media deleted at Twilio",
        )
        assert url.rsplit("/", 1)[1] in stack.twilio.media_deleted


class TestWithoutKeysOrCredentials:
    def test_offline_the_responder_says_it_cannot_listen(self, sqlite_url, live_server):
        with live_stack(
            sqlite_url, live_server, OPENAI_BASE_URL=None, OPENAI_API_KEY=None
        ) as stack:
            send_media(stack, (ogg_opus(2.0), "audio/ogg"))
            [reply] = answered(stack)

            assert "Recibí tu nota de voz" in reply.body
            assert not stack.openai.transcriptions
            [row] = media_rows(stack)
            assert (row.state, row.error) == (
                "failed",
                "not transcribed: no OpenAI key (OPENAI_API_KEY)",
            )
            # Fetched all the same: operators can play it.
            assert row.size_bytes is not None

    def test_in_dry_run_nothing_is_fetched(self, sqlite_url, live_server):
        with live_stack(
            sqlite_url, live_server, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None
        ) as stack:
            url = stack.twilio.add_media(ogg_opus(1.0), "audio/ogg")
            stack.send("whatsapp", body="", **media_form((url, "audio/ogg")))
            wait_for(stack.settled, "the reply stored (not sent: dry run)")

            [row] = media_rows(stack)
            assert (row.state, row.error) == (
                "failed",
                "not fetched: no Twilio credentials (dry run)",
            )
            assert not stack.twilio.media_requests
            assert not stack.twilio.media_storage.requests


class TestUnanswered:
    def test_with_the_ai_off_the_note_is_still_read_for_the_operator(self, sqlite_stack):
        stack = sqlite_stack
        stack.configure(ai_enabled=False)
        note = ogg_opus(2.0)
        stack.openai.transcribe_as(note, VOICE_NOTE)

        send_media(stack, (note, "audio/ogg"))
        wait_for(lambda: stack.inbound_states() == ["skipped"], "the message settled unanswered")

        [row] = media_rows(stack)
        assert (row.state, row.text) == ("understood", VOICE_NOTE)
        assert not stack.openai.requests
        assert not stack.twilio.sent

    def test_a_flooding_senders_media_are_never_read(self, database_url, live_server):
        with live_stack(database_url, live_server, RATE_LIMIT_FLOOD="1/minute") as stack:
            send_media(stack, (ogg_opus(1.0), "audio/ogg"))
            send_media(stack, (ogg_opus(2.0), "audio/ogg"))
            wait_for(stack.settled, "both messages settled")

            rows = media_rows(stack)
            assert [(row.state, row.error) for row in rows] == [
                ("understood", None),
                ("failed", "not read: the message is over the sender's flood limit"),
            ]
            assert len(stack.openai.transcriptions) == 1
