"""ReplyGenerator: the LLM behind the replies (OpenAI-compatible) and the offline responder."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import openai
from openai import AsyncOpenAI, omit
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

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
    content: str


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float


@dataclass(frozen=True, slots=True)
class GeneratedReply:
    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int


class GenerationFailed(Exception):
    """The model cannot answer this request, and asking again will not help."""


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
        )
        self._deadline = OPENAI_TIMEOUT_SECONDS

    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        started = time.perf_counter()
        messages = cast(
            "list[ChatCompletionMessageParam]",
            [{"role": m.role, "content": m.content} for m in request.messages],
        )
        try:
            async with asyncio.timeout(self._deadline):
                completion = await self._client.chat.completions.create(
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
        except openai.RateLimitError as error:
            if error.code == "insufficient_quota":
                raise GenerationFailed("the OpenAI account is out of credit") from error
            raise RetryableError("the LLM is rate limited (429)") from error
        except (openai.APITimeoutError, TimeoutError) as error:
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
        answer = _read_completion(completion)
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


# Plain ASCII, so the demo reply stays one cheap GSM-7 SMS segment where it can.
OFFLINE_NOTICE = "[Demo reply, not AI: set OPENAI_API_KEY for real answers.]"


class OfflineReplyGenerator:
    """Answers without any LLM, saying so plainly, so the loop can be tried without keys."""

    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        quoted = last if len(last) <= 60 else last[:57] + "..."
        return GeneratedReply(
            text=f'{OFFLINE_NOTICE} You said: "{quoted}"',
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
