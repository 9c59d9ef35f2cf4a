"""Understanding media: voice notes transcribed over real HTTP against FakeOpenAI through the
official SDK, PDF text, images made into data URLs a vision model takes."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from mutagen.ogg import OggPage
from openai import AsyncOpenAI
from PIL import Image
from prometheus_client import REGISTRY

from platica.config import Settings
from platica.media import understand
from platica.media.understand import (
    CUT_MARKER,
    MAX_AUDIO_BYTES,
    MAX_IMAGE_SIDE,
    TRANSCRIBE_ATTEMPTS,
    Transcriber,
    Transcript,
    UnderstandFailed,
    audio_seconds,
    create_transcriber,
    image_data_url,
    pdf_text,
)
from tests.conftest import make_settings
from tests.fakes import FakeOpenAI, image_part_error
from tests.media import samples

API_KEY = "sk-local-understand"
VOICE_NOTE = samples.ogg_opus(3.5)
SAID = "Hola, ¿tienen pan de muerto para mañana?"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Settings need a DATABASE_URL; nothing here opens it."""
    return f"sqlite+aiosqlite:///{tmp_path}/platica.db"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def settings(database_url: str, fake: FakeOpenAI) -> Settings:
    return make_settings(database_url, OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=API_KEY)


@pytest.fixture
async def transcriber(settings: Settings) -> AsyncIterator[Transcriber]:
    created = Transcriber(settings)
    yield created
    await created.aclose()


async def failure_of(transcriber: Transcriber, data: bytes, content_type: str) -> UnderstandFailed:
    with pytest.raises(UnderstandFailed) as caught:
        await transcriber.transcribe(data, content_type, "es")
    return caught.value


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestTranscriber:
    async def test_a_voice_note_goes_as_voice_ogg_with_the_language_hint(
        self, transcriber, fake, settings
    ):
        fake.transcribe_as(VOICE_NOTE, SAID)

        transcript = await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "es")

        assert transcript == Transcript(SAID, 3.5)
        [sent] = fake.transcriptions
        assert sent["model"] == settings.TRANSCRIPTION_MODEL == "gpt-4o-mini-transcribe"
        assert sent["filename"] == "voice.ogg"
        assert sent["content_type"] == "audio/ogg"
        assert sent["language"] == "es"
        assert sent["response_format"] == "json"
        assert sent["prompt"] is None
        assert sent["bytes"] == len(VOICE_NOTE)
        assert sent["sha256"] == hashlib.sha256(VOICE_NOTE).hexdigest()

    @pytest.mark.parametrize("content_type", ["audio/ogg; codecs=opus", "audio/opus", "Audio/OGG"])
    async def test_opus_in_any_spelling_is_named_ogg(self, transcriber, fake, content_type):
        transcript = await transcriber.transcribe(VOICE_NOTE, content_type, "es")

        assert transcript.text == f"(voice note of {len(VOICE_NOTE)} bytes)"
        [sent] = fake.transcriptions
        assert (sent["filename"], sent["content_type"]) == ("voice.ogg", "audio/ogg")

    @pytest.mark.parametrize(
        ("content_type", "filename"),
        [
            ("audio/mpeg", "voice.mp3"),
            ("audio/mp3", "voice.mp3"),
            ("audio/mp4", "voice.m4a"),
            ("audio/x-m4a", "voice.m4a"),
            ("audio/aac", "voice.m4a"),
            ("audio/wav", "voice.wav"),
            ("audio/x-wav", "voice.wav"),
            ("audio/webm", "voice.webm"),
        ],
    )
    async def test_other_audio_types_get_their_extension(
        self, transcriber, fake, content_type, filename
    ):
        transcript = await transcriber.transcribe(b"not really audio", content_type, None)

        assert transcript.seconds is None
        [sent] = fake.transcriptions
        assert sent["filename"] == filename
        assert sent["language"] is None

    async def test_the_language_hint_is_its_primary_subtag(self, transcriber, fake):
        await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "es-MX")
        await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "español")

        assert [sent["language"] for sent in fake.transcriptions] == ["es", None]

    async def test_a_500_is_retried(self, transcriber, fake):
        fake.transcribe_as(VOICE_NOTE, SAID)
        fake.fail_next("transcription_500")

        transcript = await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "es")

        assert transcript.text == SAID
        assert len(fake.transcriptions) == 2
        assert fake.pending_failures == []

    async def test_a_429_is_retried(self, transcriber, fake):
        fake.transcribe_as(VOICE_NOTE, SAID)
        fake.fail_next("transcription_429")

        transcript = await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "es")

        assert transcript.text == SAID
        assert len(fake.transcriptions) == 2
        assert fake.rate_limited == 1

    async def test_a_429_asking_for_longer_than_the_deadline_fails_at_once(self, transcriber, fake):
        fake.retry_after = "120"
        fake.fail_next("transcription_429")

        failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")

        assert failure.retryable
        assert failure.message == "the transcription service is rate limited (429)"
        assert len(fake.transcriptions) == 1

    async def test_it_gives_up_after_its_attempts(self, transcriber, fake):
        fake.fail_always("transcription_500")

        failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")

        assert failure.retryable
        assert failure.message == "the transcription service failed (500)"
        assert len(fake.transcriptions) == TRANSCRIBE_ATTEMPTS == 3

    async def test_a_400_is_not_retried(self, transcriber, fake):
        """OpenAI decodes no AMR: it answers 400, which asking again will not change."""
        failure = await failure_of(transcriber, b"#!AMR\n" + bytes(40), "audio/amr")

        assert not failure.retryable
        assert "(400: Unsupported file format amr)" in failure.message
        [sent] = fake.transcriptions
        assert sent["filename"] == "voice.amr"

    async def test_an_account_out_of_credit_is_not_retried(self, transcriber, fake):
        fake.fail_next("transcription_quota")

        failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")

        assert not failure.retryable
        assert failure.message == "the OpenAI account is out of credit"
        assert len(fake.transcriptions) == 1

    async def test_a_refused_key_is_not_retried_nor_quoted(self, database_url):
        with FakeOpenAI(api_key="sk-the-right-one") as fake:
            settings = make_settings(database_url, OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=API_KEY)
            transcriber = Transcriber(settings)
            try:
                failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")
            finally:
                await transcriber.aclose()
            assert len(fake.transcriptions) == 1

        assert not failure.retryable
        assert failure.message == "the transcription service refused the key (401)"

    async def test_a_hung_service_is_cut_off_at_the_deadline(self, settings, fake, monkeypatch):
        monkeypatch.setattr(understand, "TRANSCRIBE_TIMEOUT_SECONDS", 0.5)
        fake.hang_seconds = 10
        fake.fail_always("transcription_timeout")
        transcriber = Transcriber(settings)
        started = time.monotonic()
        try:
            failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")
        finally:
            await transcriber.aclose()

        assert failure.retryable
        assert time.monotonic() - started < 5

    async def test_a_voice_note_too_long_is_refused_without_a_request(self, transcriber, fake):
        failure = await failure_of(transcriber, samples.ogg_opus(601), "audio/ogg")

        assert not failure.retryable
        assert (
            failure.message
            == "the voice note is too long to transcribe (10:01 minutes, at most 10:00)"
        )
        assert fake.transcriptions == []

    async def test_ten_minutes_exactly_are_transcribed(self, transcriber, fake):
        transcript = await transcriber.transcribe(samples.ogg_opus(600), "audio/ogg", "es")

        assert transcript.seconds == 600
        assert len(fake.transcriptions) == 1

    async def test_a_voice_note_too_big_is_refused_without_a_request(self, transcriber, fake):
        failure = await failure_of(transcriber, bytes(MAX_AUDIO_BYTES + 1), "audio/ogg")

        assert not failure.retryable
        assert "too big" in failure.message
        assert fake.transcriptions == []

    @pytest.mark.parametrize("content_type", ["audio/x-unknown", "video/mp4", ""])
    async def test_an_unknown_type_is_refused_without_a_request(
        self, transcriber, fake, content_type
    ):
        failure = await failure_of(transcriber, VOICE_NOTE, content_type)

        assert not failure.retryable
        assert "cannot be transcribed" in failure.message
        assert fake.transcriptions == []

    async def test_silence_is_a_failure(self, transcriber, fake):
        fake.transcribe_as(VOICE_NOTE, "  \n")

        failure = await failure_of(transcriber, VOICE_NOTE, "audio/ogg")

        assert not failure.retryable
        assert failure.message == "no words could be made out in the voice note"

    async def test_metrics_count_the_calls_and_the_seconds_heard(self, transcriber, fake):
        calls = sample("platica_transcription_seconds_count")
        heard = sample("platica_audio_seconds_total")
        fake.fail_next("transcription_500")

        await transcriber.transcribe(VOICE_NOTE, "audio/ogg", "es")
        await transcriber.transcribe(b"no length to read", "audio/mpeg", "es")

        assert sample("platica_transcription_seconds_count") - calls == 3
        assert sample("platica_audio_seconds_total") - heard == 3.5

    async def test_no_transcriber_without_a_key_or_a_server(self, database_url, settings):
        assert create_transcriber(make_settings(database_url)) is None
        created = create_transcriber(settings)
        assert isinstance(created, Transcriber)
        await created.aclose()


class TestAudioSeconds:
    def test_an_ogg_opus_voice_note(self):
        assert audio_seconds(samples.ogg_opus(12.34), "audio/ogg; codecs=opus") == pytest.approx(
            12.34
        )

    @pytest.mark.parametrize(
        ("data", "content_type"),
        [
            (b"garbage" * 100, "audio/ogg"),
            (b"", "audio/ogg"),
            (VOICE_NOTE, "audio/amr"),
            (VOICE_NOTE[:40], "audio/ogg"),
            (VOICE_NOTE, "audio/mpeg"),
        ],
    )
    def test_unknown_when_it_cannot_be_read(self, data, content_type):
        assert audio_seconds(data, content_type) is None

    def test_the_sample_pages_carry_right_checksums(self):
        """mutagen recomputes each page's CRC as it writes the page back."""
        stream = io.BytesIO(VOICE_NOTE)
        rewritten = b""
        while stream.tell() < len(VOICE_NOTE):
            rewritten += OggPage(stream).write()

        assert rewritten == VOICE_NOTE


class TestPdfText:
    def test_an_invoice(self):
        assert pdf_text(samples.pdf(samples.INVOICE_LINES)) == "\n".join(samples.INVOICE_LINES)

    def test_whitespace_is_tidied(self):
        text = pdf_text(samples.pdf(["  Pan   dulce\t 12 MXN  ", "Conchas:\u00a0 8 MXN "]))

        assert text == "Pan dulce 12 MXN\nConchas: 8 MXN"

    def test_a_long_text_is_cut_with_a_marker(self):
        lines = [f"Renglón {number}: concha de vainilla, 8 MXN" for number in range(60)]

        text = pdf_text(samples.pdf(lines), max_chars=300)

        assert len(text) <= 300
        assert text.startswith("Renglón 0: concha de vainilla, 8 MXN\nRenglón 1:")
        assert text.endswith(" " + CUT_MARKER)
        assert "Renglón 59" not in text

    def test_a_text_that_just_fits_is_whole(self):
        assert pdf_text(samples.pdf(["Hola", "Adiós"]), max_chars=10) == "Hola\nAdiós"

    def test_pages_past_the_limit_are_left_out_and_marked(self):
        pages = [[f"Página {number}"] for number in range(1, 4)]

        assert pdf_text(samples.pdf_pages(pages), max_pages=2) == "Página 1\n\nPágina 2 […]"
        assert pdf_text(samples.pdf_pages(pages)) == "Página 1\n\nPágina 2\n\nPágina 3"

    def test_a_password_protected_pdf(self):
        with pytest.raises(UnderstandFailed) as caught:
            pdf_text(samples.encrypted_pdf(samples.INVOICE_LINES, "clave-secreta"))

        assert caught.value.message == "the PDF is password-protected"
        assert not caught.value.retryable

    def test_a_pdf_encrypted_without_a_user_password_is_read(self):
        data = samples.encrypted_pdf(samples.INVOICE_LINES, password="")

        assert pdf_text(data).startswith("Factura 1234 — Total: 560 MXN")

    @pytest.mark.parametrize(
        "data",
        [
            samples.pdf(samples.INVOICE_LINES)[:300],
            b"%PDF-1.4\n" + bytes(range(256)) * 4,
            b"esto no es un PDF",
            b"",
        ],
    )
    def test_a_damaged_pdf(self, data):
        with pytest.raises(UnderstandFailed) as caught:
            pdf_text(data)

        assert caught.value.message == "the PDF is damaged and cannot be read"
        assert not caught.value.retryable

    def test_a_scan_without_text(self):
        with pytest.raises(UnderstandFailed) as caught:
            pdf_text(samples.pdf_pages([[], []]))

        assert caught.value.message == "the PDF has no text to read (a scan or only images)"


def decoded(url: str) -> tuple[str, bytes, Image.Image]:
    """A data URL's type and bytes, and the picture they hold (which the fake's vision endpoint
    would take)."""
    head, _, payload = url.partition(",")
    assert head.startswith("data:")
    assert head.endswith(";base64")
    assert image_part_error({"type": "image_url", "image_url": {"url": url}}) is None
    data = base64.b64decode(payload, validate=True)
    return head[5:-7], data, Image.open(io.BytesIO(data))


class TestImageDataUrl:
    @pytest.mark.parametrize(
        ("data", "content_type"),
        [
            (samples.png(320, 240), "image/png"),
            (samples.jpeg(320, 240), "image/jpeg"),
            (samples.image(320, 240, "WEBP"), "image/webp"),
            (samples.image(320, 240, "GIF"), "image/gif"),
            (samples.png(MAX_IMAGE_SIDE, 10), "image/png"),
        ],
    )
    def test_a_small_image_is_kept_as_it_is(self, data, content_type):
        assert image_data_url(data, content_type) == (
            f"data:{content_type};base64," + base64.b64encode(data).decode()
        )

    def test_the_type_is_the_images_own_not_the_declared_one(self):
        mime, data, _ = decoded(image_data_url(samples.png(20, 20), "image/jpeg"))

        assert mime == "image/png"
        assert data == samples.png(20, 20)

    def test_a_large_image_is_downscaled_to_a_jpeg(self):
        mime, _, picture = decoded(image_data_url(samples.png(3000, 1000), "image/png"))

        assert mime == "image/jpeg"
        assert picture.format == "JPEG"
        assert picture.size == (2048, 683)

    def test_a_heavy_image_is_reencoded_at_its_size(self):
        data = samples.png(1300, 1300, noisy=True)
        assert len(data) > understand.MAX_IMAGE_BYTES

        mime, smaller, picture = decoded(image_data_url(data, "image/png"))

        assert mime == "image/jpeg"
        assert picture.size == (1300, 1300)
        assert len(smaller) < len(data)

    def test_a_bmp_is_converted(self):
        mime, _, picture = decoded(image_data_url(samples.image(300, 200, "BMP"), "image/bmp"))

        assert (mime, picture.size) == ("image/jpeg", (300, 200))

    def test_a_tiff_is_converted(self):
        mime, _, picture = decoded(image_data_url(samples.image(64, 48, "TIFF"), "image/tiff"))

        assert (mime, picture.size) == ("image/jpeg", (64, 48))

    def test_transparency_is_flattened_on_white(self):
        data = samples.png(3000, 300, mode="RGBA")

        _, _, picture = decoded(image_data_url(data, "image/png"))

        # The sample's alpha is 0 along its top edge.
        red, green, blue = picture.convert("RGB").getpixel((1000, 0))  # type: ignore[misc]
        assert min(red, green, blue) > 240

    def test_an_animation_becomes_its_first_frame(self):
        mime, _, picture = decoded(image_data_url(samples.animated_gif(40, 30), "image/gif"))

        assert (mime, picture.size) == ("image/jpeg", (40, 30))
        assert getattr(picture, "n_frames", 1) == 1
        assert picture.convert("L").getpixel((20, 15)) == pytest.approx(40, abs=3)

    def test_a_camera_photo_is_turned_upright(self):
        _, _, picture = decoded(image_data_url(samples.rotated_jpeg(3000, 1000), "image/jpeg"))

        assert picture.size == (683, 2048)

    @pytest.mark.parametrize(
        ("data", "content_type", "message"),
        [
            (
                b"esto no es una imagen",
                "image/jpeg",
                "image/jpeg is not an image Pl\u00e1tica can open",
            ),
            (b"\x00\x00\x00\x18ftypheic" + bytes(64), "image/heic", "image/heic is not an image"),
            (samples.png(300, 300)[:400], "image/png", "the image (image/png) is damaged"),
            (samples.jpeg(300, 300)[:600], "image/jpeg", "the image (image/jpeg) is damaged"),
        ],
    )
    def test_what_is_not_an_image_is_refused(self, data, content_type, message):
        with pytest.raises(UnderstandFailed) as caught:
            image_data_url(data, content_type)

        assert caught.value.message.startswith(message)
        assert not caught.value.retryable

    @pytest.mark.parametrize("pixels", [1500, 5000])
    def test_a_decompression_bomb_is_refused(self, monkeypatch, pixels):
        """Pillow warns past MAX_IMAGE_PIXELS and refuses past twice as many: both fail."""
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        side = int(pixels**0.5)

        with pytest.raises(UnderstandFailed) as caught:
            image_data_url(samples.png(side, side), "image/png")

        assert caught.value.message == "the image has too many pixels to open"


class TestFakeOpenAIMedia:
    """The fake takes what OpenAI takes and refuses what it refuses."""

    async def test_a_voice_note_named_opus_is_refused(self, fake):
        async with AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.audio.transcriptions.create(
                    model="gpt-4o-mini-transcribe", file=("voice.opus", VOICE_NOTE, "audio/ogg")
                )
            renamed = await client.audio.transcriptions.create(
                model="gpt-4o-mini-transcribe", file=("voice.ogg", VOICE_NOTE, "audio/ogg")
            )

        assert caught.value.body == {
            "message": "Unsupported file format opus",
            "type": "invalid_request_error",
            "param": "file",
            "code": None,
        }
        assert renamed.text == f"(voice note of {len(VOICE_NOTE)} bytes)"

    async def test_behaviours_are_taken_by_their_kind_of_request(self, fake):
        fake.fail_next("transcription_500", "500")
        async with AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Hola"}]
                )
            assert fake.pending_failures == ["transcription_500"]
            with pytest.raises(openai.InternalServerError):
                await client.audio.transcriptions.create(
                    model="m", file=("voice.ogg", VOICE_NOTE, "audio/ogg")
                )

        assert fake.pending_failures == []

    async def test_image_parts_are_taken_and_recorded_as_sent(self, fake):
        url = image_data_url(samples.png(16, 16), "image/png")
        content: list[Any] = [
            {"type": "text", "text": "¿Qué es esto?"},
            {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
        ]
        async with AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as client:
            completion = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": content}]
            )

        assert completion.choices[0].message.content == "Echo: ¿Qué es esto? [1 image]"
        [body] = fake.requests
        assert body["messages"][0]["content"] == content

    @pytest.mark.parametrize(
        "url",
        [
            "data:image/heic;base64," + base64.b64encode(b"heic").decode(),
            "data:image/png;base64," + base64.b64encode(samples.jpeg(8, 8)).decode(),
            "data:image/png;base64,@@@",
            "data:application/pdf;base64," + base64.b64encode(b"%PDF").decode(),
        ],
    )
    async def test_an_image_openai_would_not_take_is_a_400(self, fake, url):
        content: list[Any] = [{"type": "image_url", "image_url": {"url": url}}]
        async with AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": content}]
                )

        assert caught.value.code == "invalid_image_format"
