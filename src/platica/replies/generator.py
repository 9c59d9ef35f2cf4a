"""ReplyGenerator: the LLM behind the replies (OpenAI-compatible) and the offline responder."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient, omit
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from platica import texts
from platica.config import Settings
from platica.errors import RetryableError
from platica.metrics import LLM_SECONDS, LLM_TOKENS

Role = Literal["system", "user", "assistant"]

# Twilio gives a webhook 15 s; a reply should not wait much longer than that on one LLM call.
# The whole call's deadline: the SDK's timeout bounds each read, and a server trickling a byte
# now and then would never trip it.
OPENAI_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    # Text, or content parts (text and images) for a model that sees images.
    content: str | list[dict[str, Any]]
    # The kinds of media the message carried (models.MediaKind values), whatever was understood
    # of them: the offline responder says what it cannot open.
    media: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return " ".join(str(part.get("text", "")) for part in self.content if "text" in part)


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    # The customers' language and the offline responder's notice (its built-in one if None):
    # only the offline responder reads them.
    language: str = "es"
    offline_message: str | None = None


@dataclass(frozen=True, slots=True)
class GeneratedReply:
    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int


class GenerationFailed(Exception):
    """The model cannot answer this request, and asking again will not help."""


class RateLimited(RetryableError):
    """The LLM provider asks us to slow down (429, or its budget is spent): try again after
    `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# How long the provider may pause us at most, whatever it says (the SDK's own bound).
MAX_PAUSE_SECONDS = 120.0
# A pause at most this long is waited out inside the call; a longer one raises RateLimited at
# once, so the reply task hands its conversation back until then instead of holding a worker.
WAIT_IN_CALL_SECONDS = 5.0
# A 429 that says nothing about when to come back: twice as long each time, from this.
UNHINTED_PAUSE_SECONDS = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds of a duration as OpenAI's x-ratelimit-reset-* headers write it ("20ms", "1s",
    "6m0s", "1h2m3.5s"); None when it is not one."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `retry-after` (seconds or an
    HTTP date); None when it says nothing usable."""
    with contextlib.suppress(ValueError):
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(float(milliseconds) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _budget_spent_for(headers: Mapping[str, str], tokens_needed: int) -> float | None:
    """Seconds until the provider's budget allows another call like the last one, when its
    x-ratelimit headers say it is spent (no request left, or fewer tokens than that call
    used); None when it is not."""
    waits = []
    for kind, needed in (("requests", 1), ("tokens", tokens_needed)):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is None or not remaining.isdigit() or int(remaining) >= needed:
            continue
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is not None:
            waits.append(reset)
    return max(waits, default=None)


class ProviderPause:
    """Until when the LLM provider wants no request from this process: every call waits for
    it, so one 429 (or a spent budget) paces all conversations, not just the one it hit."""

    def __init__(self) -> None:
        self._until = 0.0
        # 429s in a row that said nothing about when to come back.
        self._unhinted = 0

    def remaining(self) -> float:
        return max(self._until - time.monotonic(), 0.0)

    def pause(self, seconds: float) -> float:
        """Pause for `seconds` (bounded by MAX_PAUSE_SECONDS) unless paused longer already;
        the seconds left."""
        self._until = max(self._until, time.monotonic() + min(seconds, MAX_PAUSE_SECONDS))
        return self.remaining()

    def rate_limited(self, hint: float | None) -> float:
        """A 429: pause as the provider says, else twice as long as after the last one."""
        if hint is None:
            self._unhinted += 1
            hint = UNHINTED_PAUSE_SECONDS * 2 ** (self._unhinted - 1)
        return self.pause(hint)

    def succeeded(self) -> None:
        self._unhinted = 0

    async def wait(self) -> None:
        """Return when no pause is on; RateLimited (nothing sent) if it is on for longer than
        WAIT_IN_CALL_SECONDS. Waiters end spread over a little more than the pause, so they do
        not all call the provider again at the same instant."""
        while (left := self.remaining()) > 0:
            if left > WAIT_IN_CALL_SECONDS:
                raise RateLimited("the LLM provider asked us to slow down", left)
            await asyncio.sleep(left + random.uniform(0, min(left, 1.0) / 4))


class ReplyGenerator(Protocol):
    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        """Raises RetryableError for transient failures and GenerationFailed for the rest."""
        ...

    async def aclose(self) -> None: ...


class OpenAIReplyGenerator:
    """Chat Completions through the official SDK: OpenAI, or any compatible server."""

    def __init__(self, settings: Settings) -> None:
        key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None
        self._custom_server = settings.OPENAI_BASE_URL is not None
        self._client = AsyncOpenAI(
            # Local servers (Ollama, llama.cpp) accept any key, but the SDK insists on one.
            api_key=key or "unused",
            base_url=settings.OPENAI_BASE_URL,
            timeout=OPENAI_TIMEOUT_SECONDS,
            # Retries are ours (with the job's backoff and bookkeeping), not the SDK's.
            max_retries=0,
            # aiohttp under the SDK (its documented choice for concurrency), with a connection
            # kept for every reply a worker may have waiting: the SDK's default HTTPX2 pool
            # walks all its connections on every request and response, which cost a worker
            # answering hundreds of conversations at once a third more CPU per reply.
            http_client=DefaultAioHttpClient(
                limits=httpx2.Limits(
                    max_connections=settings.WORKER_CONCURRENCY,
                    max_keepalive_connections=settings.WORKER_CONCURRENCY,
                )
            ),
        )
        self._deadline = OPENAI_TIMEOUT_SECONDS
        # One generator per process: its pause is the process's.
        self.pause = ProviderPause()

    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        messages = cast(
            "list[ChatCompletionMessageParam]",
            [{"role": m.role, "content": m.content} for m in request.messages],
        )
        await self.pause.wait()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline):
                # The raw response, for its x-ratelimit headers; parse() is what create() does
                # (measured against tests/fakes.py: the same CPU per call, within the noise).
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=request.model,
                    # The messages go out through extra_body, which the request merges in as
                    # they are: given as `messages`, the SDK first walks them against its type
                    # annotations (its async "transform", a no-op for plain role/content
                    # pairs), which cost 3.7 of the call's 5.7 ms of CPU for eleven messages.
                    # Same JSON on the wire.
                    messages=[],
                    extra_body={"messages": messages},
                    temperature=request.temperature,
                    # OpenAI's newer models want max_completion_tokens; compatible servers
                    # max_tokens.
                    max_tokens=request.max_tokens if self._custom_server else omit,
                    max_completion_tokens=omit if self._custom_server else request.max_tokens,
                )
                completion: object = raw.parse()
        except openai.RateLimitError as error:
            if error.code == "insufficient_quota":
                raise GenerationFailed("the OpenAI account is out of credit") from error
            headers = error.response.headers
            hint = retry_after(headers)
            if hint is None:
                hint = _budget_spent_for(headers, 1)
            raise RateLimited(
                "the LLM is rate limited (429)", self.pause.rate_limited(hint)
            ) from error
        except (openai.APITimeoutError, TimeoutError) as error:
            if isinstance(error.__cause__, httpx2.ConnectTimeout):
                # aiohttp's refused connection arrives as a connect timeout.
                raise RetryableError("the LLM could not be reached") from error
            raise RetryableError("the LLM timed out") from error
        except openai.APIConnectionError as error:
            raise RetryableError("the LLM could not be reached") from error
        except openai.InternalServerError as error:
            raise RetryableError(f"the LLM failed ({error.status_code})") from error
        except openai.APIStatusError as error:
            if error.status_code in (408, 409):
                raise RetryableError(f"the LLM failed ({error.status_code})") from error
            raise GenerationFailed(
                f"the LLM refused the request ({error.status_code} {error.code or ''})".strip()
            ) from error
        finally:
            LLM_SECONDS.observe(time.perf_counter() - started)
        latency_ms = round((time.perf_counter() - started) * 1000)
        self.pause.succeeded()
        answer = _read_completion(completion)
        used = answer.usage.total_tokens if answer.usage is not None else 0
        spent = _budget_spent_for(raw.headers, used or 1)
        if spent is not None:
            self.pause.pause(spent)
        if answer.usage is not None:  # spent even when the answer turns out unusable
            LLM_TOKENS.labels("prompt").inc(answer.usage.prompt_tokens or 0)
            LLM_TOKENS.labels("completion").inc(answer.usage.completion_tokens or 0)
        if not answer.text:
            raise GenerationFailed(
                "the LLM refused to answer" if answer.refused else "the LLM answered nothing"
            )
        usage = answer.usage
        return GeneratedReply(
            text=answer.text,
            model=answer.model or request.model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency_ms,
        )

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str
    refused: bool
    model: str | None
    usage: CompletionUsage | None


NOT_A_COMPLETION = "the LLM's answer was not a chat completion"


def _read_completion(completion: object) -> _Answer:
    """What a reply needs of the LLM's answer. The SDK builds its models without validating
    them, and returns the text of an answer that is not JSON: a proxy's HTML error page, or JSON
    of another shape, is a transient failure of the LLM (RetryableError), not a crash."""
    if not isinstance(completion, ChatCompletion):
        raise RetryableError(NOT_A_COMPLETION)
    try:
        choices = completion.choices
        if not isinstance(choices, list):  # missing: the SDK constructs it as None
            raise TypeError("choices is a list")
        choice = choices[0] if choices else None
        message = choice.message if choice is not None else None
        content = message.content if message is not None else None
        refusal = getattr(message, "refusal", None)
        usage = completion.usage
        model = completion.model
        if not isinstance(content, str | None) or not isinstance(model, str | None):
            raise TypeError("content and model are strings")
        if usage is not None and not isinstance(usage, CompletionUsage):
            raise TypeError("usage is an object")
    except (AttributeError, KeyError, IndexError, TypeError) as error:
        raise RetryableError(NOT_A_COMPLETION) from error
    return _Answer((content or "").strip(), bool(refusal), model, usage)


class OfflineReplyGenerator:
    """Answers without any LLM, saying so plainly, so the loop can be tried without keys."""

    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        language = texts.language_of(request.language)
        notice = request.offline_message or texts.built_in(language, "offline_message")
        names = texts.OFFLINE_MEDIA[language]
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        opaque = [names[kind] for kind in (last.media if last else ()) if kind in names]
        if opaque:
            # Nothing can listen to or look at it without a key: say so, not what it was.
            text = f"{notice} {texts.OFFLINE_CANNOT_OPEN[language].format(what=opaque[0])}"
        else:
            said = last.text if last else ""
            quoted = said if len(said) <= 60 else said[:57] + "..."
            text = f"{notice} {texts.OFFLINE_ECHO[language].format(said=quoted)}"
        return GeneratedReply(
            text=text,
            model="offline",
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=0,
        )

    async def aclose(self) -> None:
        return None


def create_generator(settings: Settings) -> ReplyGenerator:
    if settings.OPENAI_API_KEY is None and settings.OPENAI_BASE_URL is None:
        return OfflineReplyGenerator()
    return OpenAIReplyGenerator(settings)
