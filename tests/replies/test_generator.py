"""The reply generators: OpenAIReplyGenerator over real HTTP against FakeOpenAI, the offline one,
and the factory choosing between them."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from platica.config import Settings
from platica.errors import RetryableError
from platica.replies.generator import (
    ChatMessage,
    GeneratedReply,
    GenerationFailed,
    OfflineReplyGenerator,
    OpenAIReplyGenerator,
    RateLimited,
    ReplyRequest,
    create_generator,
    parse_duration,
    retry_after,
)
from platica.texts import built_in
from tests.conftest import free_port, make_settings
from tests.fakes import FakeOpenAI

API_KEY = "sk-local-abc123"
MODEL = "gpt-test-mini"
HISTORY = [
    ChatMessage("system", "You are Plática. Be brief."),
    ChatMessage("user", "Hola"),
    ChatMessage("assistant", "¡Hola! ¿En qué te ayudo?"),
    ChatMessage("user", "¿Abrís el domingo?"),
]


def fake_tokens(text: str) -> int:
    """FakeOpenAI's token count: a quarter of the characters, rounded up."""
    return -(-len(text) // 4) if text else 0


def request(messages: list[ChatMessage] | None = None, **overrides: Any) -> ReplyRequest:
    values: dict[str, Any] = {
        "model": MODEL,
        "messages": HISTORY if messages is None else messages,
        "max_tokens": 123,
        "temperature": 0.3,
    }
    values.update(overrides)
    return ReplyRequest(**values)


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


async def generate(settings: Settings) -> GeneratedReply:
    """A reply to request() from a new generator, closed afterwards."""
    generator = OpenAIReplyGenerator(settings)
    try:
        return await generator.generate(request())
    finally:
        await generator.aclose()


async def generate_failing(settings: Settings, fake: FakeOpenAI, behaviour: str) -> Exception:
    """The exception the generator raises when the fake answers with `behaviour`."""
    fake.fail_next(behaviour)
    with pytest.raises((RetryableError, GenerationFailed)) as caught:
        await generate(settings)
    return caught.value


class TestOpenAIReplyGenerator:
    async def test_answer_has_text_model_usage_and_latency(self, settings, fake):
        fake.latency = 0.05
        reply = await generate(settings)

        assert reply.text == "Echo: ¿Abrís el domingo?"
        assert reply.model == MODEL
        assert reply.prompt_tokens == 3 + sum(4 + fake_tokens(m.text) for m in HISTORY)
        assert reply.completion_tokens == fake_tokens("Echo: ¿Abrís el domingo?")
        assert 50 <= reply.latency_ms < 5000

    async def test_answer_is_stripped(self, settings, fake):
        fake.reply = lambda messages: "  \n Claro que sí.  \n"
        reply = await generate(settings)

        assert reply.text == "Claro que sí."

    async def test_request_carries_history_temperature_and_max_tokens(self, settings, fake):
        await generate(settings)

        [body] = fake.requests
        assert body["model"] == MODEL
        assert body["messages"] == [{"role": m.role, "content": m.content} for m in HISTORY]
        assert body["temperature"] == 0.3
        # A custom (compatible) server gets the classic parameter name.
        assert body["max_tokens"] == 123
        assert "max_completion_tokens" not in body

    async def test_openai_itself_gets_max_completion_tokens(self, database_url, fake):
        settings = make_settings(database_url, OPENAI_API_KEY=API_KEY)
        assert settings.OPENAI_BASE_URL is None
        generator = OpenAIReplyGenerator(settings)
        # Same generator, but its client talks to the fake instead of api.openai.com.
        await generator._client.close()
        generator._client = AsyncOpenAI(base_url=fake.url, api_key=API_KEY, max_retries=0)
        try:
            await generator.generate(request())
        finally:
            await generator.aclose()

        [body] = fake.requests
        assert body["max_completion_tokens"] == 123
        assert "max_tokens" not in body

    async def test_sends_the_api_key(self, database_url):
        with FakeOpenAI(api_key=API_KEY) as strict:
            settings = make_settings(
                database_url, OPENAI_BASE_URL=strict.url, OPENAI_API_KEY=API_KEY
            )
            reply = await generate(settings)

        assert reply.text.startswith("Echo: ")

    @pytest.mark.parametrize(
        ("behaviour", "kind", "says"),
        [
            pytest.param("429", RetryableError, "", id="rate_limit_is_retryable"),
            pytest.param("quota", GenerationFailed, "credit", id="exhausted_quota_fails_for_good"),
            pytest.param("500", RetryableError, "500", id="server_error_is_retryable"),
            pytest.param("400", GenerationFailed, "400", id="bad_request_fails_for_good"),
            pytest.param("html", RetryableError, "not a chat completion", id="html_is_retryable"),
            pytest.param("refusal", GenerationFailed, "refused", id="refusal_fails_for_good"),
            pytest.param("empty", GenerationFailed, "nothing", id="empty_answer_fails_for_good"),
        ],
    )
    async def test_a_failed_call(self, behaviour, kind, says, settings, fake):
        """Retryable (our job retries, with its own backoff) or failed for good, with a reason
        (`says`; a 429's wording is its own): either way, the SDK did not try again."""
        error = await generate_failing(settings, fake, behaviour)

        assert isinstance(error, kind)
        assert says in str(error)
        assert len(fake.requests) == 1

    async def test_timeout_is_retryable_and_bounded(self, database_url, fake, monkeypatch):
        monkeypatch.setattr("platica.replies.generator.OPENAI_TIMEOUT_SECONDS", 0.5)
        settings = make_settings(database_url, OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=API_KEY)
        fake.hang_seconds = 5
        started = time.monotonic()

        error = await generate_failing(settings, fake, "timeout")

        assert isinstance(error, RetryableError)
        assert "timed out" in str(error)
        assert time.monotonic() - started < 3

    async def test_a_trickling_server_is_cut_off_at_the_deadline(
        self, database_url, fake, monkeypatch
    ):
        """A byte every 50 ms never trips a read timeout; the call's own deadline ends it."""
        monkeypatch.setattr("platica.replies.generator.OPENAI_TIMEOUT_SECONDS", 0.5)
        settings = make_settings(database_url, OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=API_KEY)
        fake.hang_seconds = 8

        error = await generate_failing(settings, fake, "trickle")

        assert isinstance(error, RetryableError)
        assert "timed out" in str(error)

    async def test_a_trickled_answer_within_the_deadline_is_read(self, settings, fake):
        fake.hang_seconds = 0.2
        fake.fail_next("trickle")
        reply = await generate(settings)
        assert reply.text.startswith("Echo: ")

    async def test_json_that_is_not_a_completion_is_retryable(self, settings, fake):
        fake.reply = lambda messages: "unused"
        original = fake._completion

        def broken(*args: Any) -> dict[str, Any]:
            return {"id": original(*args)["id"], "object": "chat.completion"}

        fake._completion = broken
        with pytest.raises(RetryableError, match="not a chat completion"):
            await generate(settings)

    async def test_blank_answer_fails_for_good(self, settings, fake):
        fake.reply = lambda messages: "  \n "

        with pytest.raises(GenerationFailed):
            await generate(settings)

    async def test_unreachable_server_is_retryable(self, database_url):
        closed = f"http://127.0.0.1:{free_port()}/v1"
        settings = make_settings(database_url, OPENAI_BASE_URL=closed, OPENAI_API_KEY=API_KEY)
        with pytest.raises(RetryableError, match="could not be reached"):
            await generate(settings)


class TestProviderLimits:
    """429s and the x-ratelimit headers pace the calls: a pause for the whole process."""

    async def test_a_429_carries_its_retry_after(self, settings, fake):
        fake.retry_after = "7"
        error = await generate_failing(settings, fake, "429")

        assert isinstance(error, RateLimited)
        assert error.retry_after == pytest.approx(7, abs=0.5)

    async def test_retry_after_ms_comes_first(self, settings, fake):
        fake.retry_after, fake.retry_after_ms = "7", "2500"
        error = await generate_failing(settings, fake, "429")

        assert isinstance(error, RateLimited)
        assert error.retry_after == pytest.approx(2.5, abs=0.5)

    async def test_retry_after_as_an_http_date(self, settings, fake):
        fake.retry_after = email.utils.format_datetime(
            datetime.now(UTC) + timedelta(seconds=30), usegmt=True
        )
        error = await generate_failing(settings, fake, "429")

        assert isinstance(error, RateLimited)
        assert 25 <= error.retry_after <= 31

    async def test_without_retry_after_the_reset_header_says_how_long(self, settings, fake):
        fake.retry_after = None  # the scripted 429 says x-ratelimit-reset-requests: 20s
        error = await generate_failing(settings, fake, "429")

        assert isinstance(error, RateLimited)
        assert error.retry_after == pytest.approx(20, abs=1)

    async def test_while_paused_no_request_is_sent(self, settings, fake):
        fake.retry_after = "30"
        fake.fail_next("429")
        generator = OpenAIReplyGenerator(settings)
        try:
            with pytest.raises(RateLimited):
                await generator.generate(request())
            with pytest.raises(RateLimited) as again:
                await generator.generate(request())
        finally:
            await generator.aclose()

        assert len(fake.requests) == 1
        assert 25 <= again.value.retry_after <= 30

    async def test_a_short_pause_is_waited_out_before_the_next_request(self, settings, fake):
        fake.retry_after = "0.5"
        fake.fail_next("429")
        generator = OpenAIReplyGenerator(settings)
        try:
            with pytest.raises(RateLimited):
                await generator.generate(request())
            reply = await generator.generate(request())
        finally:
            await generator.aclose()

        assert reply.text.startswith("Echo: ")
        first, second = fake.request_times
        assert second - first >= 0.5

    async def test_an_exhausted_request_budget_pauses_until_its_reset(self, settings, fake):
        """remaining-requests 0 on a success: the next call waits for the reset instead of
        getting a 429."""
        fake.rate_limit_requests, fake.rate_limit_window = 2, 0.6
        generator = OpenAIReplyGenerator(settings)
        try:
            for _ in range(4):
                await generator.generate(request())
        finally:
            await generator.aclose()

        assert fake.rate_limited == 0
        times = fake.request_times
        assert len(times) == 4
        # Two per window: the third waited for the first window's reset.
        assert times[2] - times[0] >= 0.6

    async def test_out_of_credit_is_not_paced(self, settings, fake):
        error = await generate_failing(settings, fake, "quota")

        assert isinstance(error, GenerationFailed)
        assert not isinstance(error, RateLimited)


class TestHeaders:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5s", 0.5)],
    )
    def test_durations_as_openai_writes_them(self, text, seconds):
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "soon", "5", "1x", "1s and more", None])
    def test_what_is_not_a_duration(self, text):
        assert parse_duration(text) is None

    def test_retry_after_that_says_nothing_usable(self):
        assert retry_after({"retry-after": "later, maybe"}) is None
        assert retry_after({}) is None


ENGLISH_NOTICE = built_in("en", "offline_message")


class TestOfflineReplyGenerator:
    async def test_answers_in_spanish_by_default(self):
        generator = OfflineReplyGenerator()

        reply = await generator.generate(request())

        assert reply.text == (
            "[Respuesta de prueba, sin IA: configura OPENAI_API_KEY para respuestas reales.] "
            'Dijiste: "¿Abrís el domingo?"'
        )

    async def test_says_in_spanish_it_cannot_open_a_voice_note(self):
        generator = OfflineReplyGenerator()
        note = ChatMessage("user", "[voice note that could not be transcribed]", ("audio",))

        reply = await generator.generate(request([note], language="es"))

        assert "Recibí tu nota de voz" in reply.text
        assert "sin una clave de OpenAI" in reply.text

    async def test_an_edited_notice_replaces_the_built_in_one(self):
        generator = OfflineReplyGenerator()

        reply = await generator.generate(request(offline_message="[Modo demo de Panadería Lola]"))

        assert reply.text == '[Modo demo de Panadería Lola] Dijiste: "¿Abrís el domingo?"'

    async def test_says_it_is_not_ai_and_quotes_the_last_user_message(self):
        generator = OfflineReplyGenerator()

        reply = await generator.generate(request(language="en"))

        assert reply.text.startswith(ENGLISH_NOTICE)
        assert "not AI" in reply.text
        assert reply.text.endswith('You said: "¿Abrís el domingo?"')
        assert reply.model == "offline"
        assert (reply.prompt_tokens, reply.completion_tokens) == (None, None)
        await generator.aclose()

    async def test_truncates_a_long_message(self):
        long = "x" * 57 + "TAIL-NOT-SHOWN"
        generator = OfflineReplyGenerator()

        reply = await generator.generate(request([ChatMessage("user", long)], language="en"))

        assert reply.text.endswith(f'You said: "{"x" * 57}..."')
        assert "TAIL" not in reply.text

    async def test_keeps_a_60_character_message_whole(self):
        exact = "y" * 60
        generator = OfflineReplyGenerator()

        reply = await generator.generate(request([ChatMessage("user", exact)], language="en"))

        assert reply.text.endswith(f'You said: "{exact}"')

    async def test_quotes_nothing_without_a_user_message(self):
        generator = OfflineReplyGenerator()

        reply = await generator.generate(
            request([ChatMessage("system", "Be brief.")], language="en")
        )

        assert reply.text.endswith('You said: ""')

    async def test_says_plainly_it_cannot_open_a_voice_note_without_a_key(self):
        generator = OfflineReplyGenerator()
        note = ChatMessage("user", "[voice note that could not be transcribed]", ("audio",))

        reply = await generator.generate(request([note], language="en"))

        assert reply.text.startswith(ENGLISH_NOTICE)
        assert "I received your voice note" in reply.text
        assert "without an OpenAI key" in reply.text
        assert "You said" not in reply.text

    async def test_a_location_is_quoted_like_text(self):
        generator = OfflineReplyGenerator()
        place = ChatMessage("user", "[location: 19.432608, -99.133209]", ("location",))

        reply = await generator.generate(request([place], language="en"))

        assert reply.text.endswith('You said: "[location: 19.432608, -99.133209]"')


class TestCreateGenerator:
    async def test_offline_without_key_or_base_url(self, database_url):
        generator = create_generator(make_settings(database_url))

        assert isinstance(generator, OfflineReplyGenerator)
        await generator.aclose()

    async def test_openai_with_a_key(self, database_url):
        generator = create_generator(make_settings(database_url, OPENAI_API_KEY=API_KEY))

        assert isinstance(generator, OpenAIReplyGenerator)
        await generator.aclose()

    async def test_openai_with_only_a_base_url(self, database_url):
        generator = create_generator(
            make_settings(database_url, OPENAI_BASE_URL="http://127.0.0.1:11434/v1")
        )

        assert isinstance(generator, OpenAIReplyGenerator)
        await generator.aclose()
