"""Protocol-faithful fakes of the OpenAI Chat Completions API and Twilio's Messages API.

Each fake is a small Starlette app served by uvicorn over real HTTP on 127.0.0.1, so the official
SDKs (``openai`` 3.x ``AsyncOpenAI`` and ``twilio`` 9.x with ``AsyncTwilioHttpClient``) talk to it
exactly as they would talk to the real services.

In a test::

    with FakeOpenAI() as openai_fake, FakeTwilio() as twilio_fake:
        openai_fake.fail_next("429")            # the next completion gets a 429
        twilio_fake.callbacks = True            # post signed "sent"/"delivered" status callbacks
        ...  # point OPENAI_BASE_URL at openai_fake.url, TWILIO_API_BASE_URL at twilio_fake.url

As separate processes (e.g. for a benchmark)::

    python -m tests.fakes openai --port 9101 --latency 1.0
    python -m tests.fakes twilio --port 9102 --latency 0.1 --callbacks --media-latency 0.1

An out-of-process fake is scripted over HTTP: ``POST /_fake/control`` with a JSON body such as
``{"fail_next": ["429"], "fail_always": null, "latency": 0.5, "reset": true}``, and inspected with
``GET /_fake/state``. The Twilio one serves its media storage host too (on ``--media-port``, else
a free port), and registers media with ``POST /_fake/media?count=N``: the item's bytes as the
body, its type as the Content-Type; it answers ``{"urls": [...]}``, N media URLs (each of a new
message) as a webhook's ``MediaUrl0`` carries them, like ``add_media()``. It registers a template
(a Content API content) with ``POST /_fake/content``, a JSON body with ``add_content()``'s
arguments, answering ``{"sid": "HX…"}``; ``DELETE /_fake/content/{sid}`` removes one.

Client timeouts against the Twilio fake (the ``"timeout"`` behaviour), as found with twilio 9.13 and
aiohttp 3.14:

* ``AsyncTwilioHttpClient(timeout=...)`` does NOT bound requests. Its ``request()`` forwards the
  per-request ``timeout`` argument (``None`` from ``Client.request_async``) to aiohttp, and aiohttp
  turns an explicit ``None`` into ``ClientTimeout(total=None)``, i.e. no timeout at all, overriding
  the session default. A hung Twilio API therefore hangs the caller forever.
* Bounding the call with ``asyncio.timeout(...)`` / ``asyncio.wait_for(...)`` raises the builtin
  ``TimeoutError`` (``asyncio.TimeoutError`` is the same class on 3.11). No ``TwilioException``
  is involved: twilio-python never wraps transport errors.
* A client that passes a real timeout to aiohttp (e.g. a subclass of ``AsyncTwilioHttpClient``
  whose ``request()`` uses ``self.timeout`` when no timeout is given) gets aiohttp's total-timeout
  error, which is also a ``TimeoutError`` (``asyncio.TimeoutError``), not a ``TwilioException``.
  Either way, catch ``TimeoutError`` (and ``aiohttp.ClientError`` for connection failures).

Also found: with aiohttp 3.14, every twilio async request emits two DeprecationWarnings ("BasicAuth
is deprecated ..." and "The 'auth' parameter is deprecated ..."), which ``filterwarnings = error``
turns into failures; tests/test_fakes.py ignores them by message.

The timeout is ambiguous on purpose: the fake has accepted (and recorded in ``.sent``) the message,
like Twilio may have, before the client gave up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import copy
import email.parser
import email.utils
import hashlib
import hmac
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from platica.channels import forms
from platica.models import Channel
from tests.factories import ACCOUNT_SID, AUTH_TOKEN

logger = logging.getLogger("tests.fakes")

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


# --------------------------------------------------------------------------------------------------
# Shared machinery: uvicorn in a background thread, scripted failures, interruptible sleeps


class _FakeServer:
    """A Starlette app served by uvicorn in a daemon thread on a free 127.0.0.1 port."""

    #: Behaviours accepted by ``fail_next``/``fail_always`` (subclasses extend ``_is_behaviour``).
    BEHAVIOURS: frozenset[str] = frozenset()
    #: Whether uvicorn adds its own ``Date`` header (off for a fake that writes its own).
    UVICORN_DATE_HEADER = True

    def __init__(self, *, port: int | None, latency: float, hang_seconds: float) -> None:
        self.latency = latency
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failures: deque[str] = deque()
        self._always: str | None = None
        self._socket: socket.socket | None = None
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        routes = [
            *self._routes(),
            Route("/_fake/state", self._state_endpoint, methods=["GET"]),
            Route("/_fake/control", self._control_endpoint, methods=["POST"]),
            Route("/{path:path}", self._not_found, methods=ALL_METHODS),
        ]
        self.app = Starlette(routes=routes)

    # -- to be provided by the fakes -------------------------------------------------------------

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _clear_records(self) -> None:
        raise NotImplementedError

    async def _not_found(self, request: Request) -> Response:
        raise NotImplementedError

    def _is_behaviour(self, behaviour: str) -> bool:
        return behaviour in self.BEHAVIOURS

    # -- scripting -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port given, or else the free one chosen by start()."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has no port until started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *behaviours: str) -> None:
        """Queue behaviours; each is consumed by one request, then normal answers resume."""
        for behaviour in behaviours:
            if not self._is_behaviour(behaviour):
                raise ValueError(f"unknown behaviour {behaviour!r} for {type(self).__name__}")
        with self._lock:
            self._failures.extend(behaviours)

    def fail_always(self, behaviour: str | None) -> None:
        """Apply ``behaviour`` to every request once the ``fail_next`` queue is empty (None: off)."""
        if behaviour is not None and not self._is_behaviour(behaviour):
            raise ValueError(f"unknown behaviour {behaviour!r} for {type(self).__name__}")
        with self._lock:
            self._always = behaviour

    @property
    def pending_failures(self) -> list[str]:
        with self._lock:
            return list(self._failures)

    def reset(self) -> None:
        """Forget recorded traffic and scripted failures."""
        with self._lock:
            self._failures.clear()
            self._always = None
            self._clear_records()

    def _next_behaviour(self) -> str | None:
        with self._lock:
            if self._failures:
                return self._failures.popleft()
            return self._always

    async def _sleep(self, seconds: float) -> None:
        """asyncio.sleep that ends early when the fake is stopping (so stop() never hangs)."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Half-second slices: hundreds of slow requests at once must not cost the fake the
            # CPU of thousands of wake-ups a second (on a machine the service shares).
            await asyncio.sleep(min(remaining, 0.5))

    # -- control endpoints (for fakes running in another process) --------------------------------

    async def _state_endpoint(self, request: Request) -> Response:
        state = self._state()
        state["pending_failures"] = self.pending_failures
        state["latency"] = self.latency
        return JSONResponse(state)

    async def _control_endpoint(self, request: Request) -> Response:
        try:
            command = json.loads(await request.body() or b"{}")
            if not isinstance(command, dict):
                raise ValueError("expected a JSON object")
            if command.get("reset"):
                self.reset()
            if "latency" in command:
                self.latency = float(command["latency"])
            if "hang_seconds" in command:
                self.hang_seconds = float(command["hang_seconds"])
            if "fail_always" in command:
                self.fail_always(command["fail_always"])
            self.fail_next(*command.get("fail_next", []))
            self._control(command)
        except (ValueError, TypeError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return await self._state_endpoint(request)

    def _control(self, command: dict[str, Any]) -> None:
        """Fake-specific settings from ``POST /_fake/control``."""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        if self._port is None:
            # Bind here and hand the socket to uvicorn: no race for the port.
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._socket.bind(("127.0.0.1", 0))
            self._port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self._port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            date_header=self.UVICORN_DATE_HEADER,
        )
        server = uvicorn.Server(config)
        sockets = [self._socket] if self._socket is not None else None
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": sockets},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _estimate_tokens(text: str) -> int:
    """Roughly 4 characters per token, as OpenAI's rule of thumb for English text."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Any) -> str:
    """The text of a Chat Completions message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


def _images_of(content: Any) -> list[dict[str, Any]]:
    """The image parts (``{"type": "image_url", ...}``) of a Chat Completions message content."""
    if not isinstance(content, list):
        return []
    return [part for part in content if isinstance(part, dict) and part.get("type") == "image_url"]


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """Default FakeOpenAI reply: "Echo: " + the last user message's text, and how many images it
    showed, if any ("Echo: ¿Qué es esto? [1 image]")."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            images = len(_images_of(content))
            shown = f" [{images} image{'s' if images > 1 else ''}]" if images else ""
            return "Echo: " + _text_of(content) + shown
    return "Echo: "


# What OpenAI's vision models take, by a data URL's type, and how each format's bytes begin.
VISION_FORMATS = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
MAX_VISION_BYTES = 20 * 1024 * 1024
_DATA_URL = re.compile(r"data:([^;,]*);base64,(.*)", re.DOTALL)


def image_part_error(part: dict[str, Any]) -> str | None:
    """Why OpenAI would refuse this image part (None: it would take it). http(s) URLs are taken
    unfetched; a data URL must be base64 of a PNG, JPEG, GIF or WEBP of at most 20 MB."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        return "Missing required parameter: 'image_url.url'."
    if isinstance(image_url, dict) and image_url.get("detail", "auto") not in (
        "auto",
        "low",
        "high",
    ):
        return "Invalid value for 'image_url.detail': expected one of 'auto', 'low' or 'high'."
    if url.startswith(("http://", "https://")):
        return None
    match = _DATA_URL.fullmatch(url)
    if match is None:
        return "Invalid 'image_url.url': expected a URL or a base64 data URL."
    mime, payload = match.groups()
    if not mime.startswith("image/"):
        return "Invalid MIME type. Only image types are supported."
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "Invalid base64 image_url."
    signatures = VISION_FORMATS.get(mime)
    if signatures is None or not data.startswith(signatures):
        return (
            "You uploaded an unsupported image. Please make sure your image has of one the "
            "following formats: ['png', 'jpeg', 'gif', 'webp']."
        )
    if len(data) > MAX_VISION_BYTES:
        return "Image too large: images must be at most 20 MB."
    return None


# The extensions OpenAI's /v1/audio/transcriptions decodes (it goes by the file's name).
TRANSCRIPTION_FORMATS = frozenset(
    {"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "wav", "webm"}
)
MAX_TRANSCRIPTION_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> dict[str, FormPart] | None:
    """The parts of a multipart/form-data body by field name (the last of a repeated name);
    None when it is not one. The parts' bytes are split out exactly as sent."""
    header = email.parser.Parser().parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        return None
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        return None
    parts: dict[str, FormPart] = {}
    for chunk in chunks[1:-1]:
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            return None
        headers = email.parser.BytesHeaderParser().parsebytes(head.lstrip(b" \t").lstrip(b"\r\n"))
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return None
        filename = headers.get_param("filename", header="content-disposition")
        parts[name] = FormPart(
            name,
            filename if isinstance(filename, str) else None,
            headers.get("content-type"),
            data,
        )
    return parts


# --------------------------------------------------------------------------------------------------
# OpenAI


class FakeOpenAI(_FakeServer):
    """``POST /v1/chat/completions`` and ``POST /v1/audio/transcriptions`` answering like OpenAI,
    with scripted failures.

    Chat completions take image parts (``{"type": "image_url", ...}``) and refuse, with OpenAI's
    400, a data URL that is not base64 of a PNG, JPEG, GIF or WEBP; ``requests`` keeps them as
    they came. Transcriptions (multipart, the file named with an extension OpenAI decodes, else
    400 "Unsupported file format opus") answer ``{"text": ...}``: the transcript registered with
    ``transcribe_as(data, text)``, else "(voice note of N bytes)"; ``transcriptions`` records them.

    Behaviours for ``fail_next``/``fail_always``, each consumed by the kind of request it names
    (a chat behaviour by the next completion, a transcription one by the next transcription):
      "429"      429 rate_limit_exceeded (header ``retry-after: <self.retry_after>``)
      "quota"    429 insufficient_quota
      "500"      500 server_error
      "400"      400 context_length_exceeded
      "timeout"  sleep ``hang_seconds`` before answering normally (the client should time out)
      "refusal"  200, message.content None and message.refusal set
      "empty"    200, message.content ""
      "trickle"  200 at once, then the body a byte at a time: a space every ``trickle_seconds``
                 for ``hang_seconds`` (JSON allows leading whitespace), then the completion (a
                 slow proxy or an overloaded server: no read ever waits long)
      "html"     200 with a proxy's HTML page (``text/html``) instead of a completion
      "transcription_429"      429 rate_limit_exceeded (``retry-after: <self.retry_after>``)
      "transcription_quota"    429 insufficient_quota
      "transcription_500"      500 server_error
      "transcription_timeout"  sleep ``hang_seconds``, then transcribe normally
    """

    TRANSCRIPTION_BEHAVIOURS = frozenset(
        {"transcription_429", "transcription_quota", "transcription_500", "transcription_timeout"}
    )
    BEHAVIOURS = frozenset(
        {"429", "quota", "500", "400", "timeout", "refusal", "empty", "trickle", "html"}
        | TRANSCRIPTION_BEHAVIOURS
    )
    HTML = (
        "<html><head><title>502 Bad Gateway</title></head>"
        "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
    )
    REFUSAL = "I'm sorry, I can't help with that."

    def __init__(
        self,
        *,
        latency: float = 0.0,
        hang_seconds: float = 30.0,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        api_key: str | None = None,
        port: int | None = None,
    ) -> None:
        self.reply: Callable[[list[dict[str, Any]]], str] = reply or echo_reply
        #: When set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
        self.api_key = api_key
        #: Value of the ``retry-after`` header on "429" (None: no header). The openai SDK ignores
        #: 0 (it only honours 0 < retry-after <= 60 s) and falls back to its own backoff.
        self.retry_after: str | None = "0"
        #: Value of the ``retry-after-ms`` header on "429" (None: no header; the SDK reads it first).
        self.retry_after_ms: str | None = None
        #: "trickle": seconds between two bytes.
        self.trickle_seconds = 0.05
        #: A request budget like OpenAI's RPM limit: at most this many completions per
        #: ``rate_limit_window`` seconds (a fixed window from its first request). Every answer
        #: then carries ``x-ratelimit-limit/remaining/reset-requests``, and a request over the
        #: budget gets 429 rate_limit_exceeded with ``retry-after`` (whole seconds to the reset).
        self.rate_limit_requests: int | None = None
        self.rate_limit_window = 60.0
        self._window_start: float | None = None
        self._window_used = 0
        self._requests: list[dict[str, Any]] = []
        #: Completions being answered right now, and the most there have been at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._request_times: list[float] = []
        self._rate_limited = 0
        self._transcripts: dict[str, str] = {}
        self._transcriptions: list[dict[str, Any]] = []
        #: The model ids ``GET /v1/models`` lists (and ``GET /v1/models/{id}`` finds).
        self.models: list[str] = list(LISTED_MODELS)
        super().__init__(port=port, latency=latency, hang_seconds=hang_seconds)

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``OPENAI_BASE_URL``)."""
        return self.base_url + "/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request body received (failed ones included), in order."""
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def request_times(self) -> list[float]:
        """When each request of ``requests`` arrived (time.monotonic())."""
        with self._lock:
            return list(self._request_times)

    @property
    def rate_limited(self) -> int:
        """How many requests got a 429 rate_limit_exceeded (scripted or over the budget)."""
        with self._lock:
            return self._rate_limited

    def transcribe_as(self, data: bytes, text: str) -> None:
        """Transcribe these exact bytes as `text` (kept across ``reset()``, like ``reply``)."""
        with self._lock:
            self._transcripts[hashlib.sha256(data).hexdigest()] = text

    @property
    def transcriptions(self) -> list[dict[str, Any]]:
        """Every transcription request (failed ones included), in order: model, filename,
        content_type (the file part's), language, prompt, response_format (None when not
        sent), bytes (the file's length), sha256, received_at (time.monotonic())."""
        with self._lock:
            return copy.deepcopy(self._transcriptions)

    def _next_behaviour(self) -> str | None:
        """The next chat behaviour (transcription ones are left for transcriptions)."""
        return self._take_behaviour(transcription=False)

    def _take_behaviour(self, *, transcription: bool) -> str | None:
        with self._lock:
            for behaviour in self._failures:
                if (behaviour in self.TRANSCRIPTION_BEHAVIOURS) == transcription:
                    self._failures.remove(behaviour)
                    return behaviour
            always = self._always
        if always is not None and (always in self.TRANSCRIPTION_BEHAVIOURS) == transcription:
            return always
        return None

    def _take_from_budget(self) -> tuple[dict[str, str], float | None]:
        """The x-ratelimit headers of this request and, when it is over the budget, the seconds
        until the window resets."""
        limit = self.rate_limit_requests
        if limit is None:
            return {}, None
        now = time.monotonic()
        with self._lock:
            if self._window_start is None or now >= self._window_start + self.rate_limit_window:
                self._window_start, self._window_used = now, 0
            reset = self._window_start + self.rate_limit_window - now
            over = self._window_used >= limit
            if not over:
                self._window_used += 1
            remaining = limit - self._window_used
        headers = {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": go_duration(reset),
        }
        return headers, reset if over else None

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            Route("/v1/audio/transcriptions", self._audio_transcriptions, methods=["POST"]),
            *self._model_routes(),
        ]

    def _state(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "max_in_flight": self.max_in_flight,
            "transcriptions": self.transcriptions,
        }

    def _clear_records(self) -> None:
        self._requests.clear()
        self._transcriptions.clear()
        self.max_in_flight = 0
        self._request_times.clear()
        self._rate_limited = 0
        self._window_start, self._window_used = None, 0

    # -- responses -------------------------------------------------------------------------------

    @staticmethod
    def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            "x-request-id": "req_" + uuid.uuid4().hex,
            "openai-version": "2020-10-01",
            "openai-processing-ms": "1",
        }
        headers.update(extra or {})
        return headers

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return JSONResponse(body, status_code=status, headers=self._headers(headers))

    def _rate_limit_error(
        self, model: str, headers: dict[str, str], retry_after: int | None
    ) -> JSONResponse:
        with self._lock:
            self._rate_limited += 1
        limit = headers.get("x-ratelimit-limit-requests", "3")
        reset = headers.get("x-ratelimit-reset-requests", "20s")
        headers = dict(headers)
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return self._error(
            429,
            f"Rate limit reached for {model} in organization org-fake on requests per min "
            f"(RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in {reset}.",
            "requests",
            "rate_limit_exceeded",
            headers=headers,
        )

    def _scripted_error(self, behaviour: str | None, model: str) -> JSONResponse | None:
        if behaviour == "429":
            headers = {
                "x-ratelimit-limit-requests": "3",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "20s",
            }
            if self.retry_after is not None:
                headers["retry-after"] = self.retry_after
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = self.retry_after_ms
            return self._rate_limit_error(model, headers, None)
        if behaviour == "quota":
            return self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if behaviour == "500":
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if behaviour == "400":
            return self._error(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 131072 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                param="messages",
            )
        return None

    async def _not_found(self, request: Request) -> Response:
        return self._error(
            404,
            f"Invalid URL ({request.method} {request.url.path})",
            "invalid_request_error",
            None,
        )

    async def _chat_completions(self, request: Request) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer_completion(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer_completion(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self._error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
            )
        with self._lock:
            self._requests.append(body)
            self._request_times.append(time.monotonic())
        denied = self._check_key(request)
        if denied is not None:
            return denied
        behaviour = self._next_behaviour()
        await self._sleep(self.latency)
        if behaviour == "timeout":
            await self._sleep(self.hang_seconds)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(
                400, "you must provide a model parameter", "invalid_request_error", None
            )
        error = self._scripted_error(behaviour, model)
        if error is not None:
            return error
        budget, over_for = self._take_from_budget()
        if over_for is not None:
            return self._rate_limit_error(model, budget, math.ceil(over_for))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                param="messages",
            )
        if body.get("stream"):
            return self._error(
                400,
                "FakeOpenAI does not implement streaming.",
                "invalid_request_error",
                None,
                param="stream",
            )
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            for part in _images_of(content):
                refused = image_part_error(part)
                if refused is not None:
                    return self._error(
                        400,
                        refused,
                        "invalid_request_error",
                        "invalid_image_format",
                        param=f"messages.[{index}].content",
                    )
        if behaviour == "html":
            return HTMLResponse(self.HTML, headers=self._headers(budget))
        completion = self._completion(model, messages, body, behaviour)
        if behaviour == "trickle":
            return StreamingResponse(
                self._trickle(json.dumps(completion).encode()),
                media_type="application/json",
                headers=self._headers(budget),
            )
        return JSONResponse(completion, headers=self._headers(budget))

    def _check_key(self, request: Request) -> JSONResponse | None:
        """OpenAI's 401 when a key is required and the request does not carry it."""
        if self.api_key is not None and not hmac.compare_digest(
            request.headers.get("authorization", ""), f"Bearer {self.api_key}"
        ):
            return self._error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return None

    async def _audio_transcriptions(self, request: Request) -> Response:
        parts = parse_multipart(request.headers.get("content-type", ""), await request.body())
        if parts is None:
            return self._error(
                400,
                "Invalid Content-Type header (expected multipart/form-data).",
                "invalid_request_error",
                None,
            )

        def field(name: str) -> str | None:
            part = parts.get(name)
            return None if part is None else part.data.decode("utf-8", "replace")

        upload = parts.get("file")
        data = upload.data if upload is not None else b""
        model = field("model")
        response_format = field("response_format")
        with self._lock:
            self._transcriptions.append(
                {
                    "model": model,
                    "filename": upload.filename if upload is not None else None,
                    "content_type": upload.content_type if upload is not None else None,
                    "language": field("language"),
                    "prompt": field("prompt"),
                    "response_format": response_format,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "received_at": time.monotonic(),
                }
            )
            transcript = self._transcripts.get(hashlib.sha256(data).hexdigest())
        denied = self._check_key(request)
        if denied is not None:
            return denied
        behaviour = self._take_behaviour(transcription=True)
        await self._sleep(self.latency)
        if behaviour == "transcription_timeout":
            await self._sleep(self.hang_seconds)
        if not model:
            return self._error(
                400, "you must provide a model parameter", "invalid_request_error", None
            )
        error = self._scripted_error(
            behaviour.removeprefix("transcription_") if behaviour else None, model
        )
        if error is not None:
            return error
        if upload is None or upload.filename is None:
            return self._error(
                400,
                "Missing required parameter: 'file'.",
                "invalid_request_error",
                "missing_required_parameter",
                param="file",
            )
        extension = upload.filename.rpartition(".")[2].lower() if "." in upload.filename else ""
        if extension not in TRANSCRIPTION_FORMATS:
            return self._error(
                400,
                f"Unsupported file format {extension or upload.filename}",
                "invalid_request_error",
                None,
                param="file",
            )
        if len(data) > MAX_TRANSCRIPTION_BYTES:
            return self._error(
                413,
                f"Maximum content size limit ({MAX_TRANSCRIPTION_BYTES}) exceeded "
                f"({len(data)} bytes read)",
                "server_error",
                None,
            )
        text = transcript if transcript is not None else f"(voice note of {len(data)} bytes)"
        if response_format in (None, "json"):
            return JSONResponse({"text": text}, headers=self._headers())
        if response_format == "text":
            return Response(text + "\n", media_type="text/plain", headers=self._headers())
        return self._error(
            400,
            f"response_format '{response_format}' is not compatible with model '{model}'. "
            "Use 'json' or 'text' instead.",
            "invalid_request_error",
            "unsupported_value",
            param="response_format",
        )

    async def _trickle(self, body: bytes) -> AsyncIterator[bytes]:
        deadline = time.monotonic() + self.hang_seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            yield b" "
            await asyncio.sleep(self.trickle_seconds)
        yield body

    def _completion(
        self, model: str, messages: list[Any], body: dict[str, Any], behaviour: str | None
    ) -> dict[str, Any]:
        typed = [message for message in messages if isinstance(message, dict)]
        content: str | None
        refusal: str | None = None
        finish_reason = "stop"
        if behaviour == "refusal":
            content, refusal = None, self.REFUSAL
        elif behaviour == "empty":
            content = ""
        else:
            content = self.reply(typed)
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and limit > 0 and _estimate_tokens(content) > limit:
                content, finish_reason = content[: limit * 4], "length"
        prompt_tokens = 3 + sum(4 + _estimate_tokens(_text_of(m.get("content"))) for m in typed)
        completion_tokens = _estimate_tokens(content or refusal or "")
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:29],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": refusal,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    # -- models (GET /v1/models, GET /v1/models/{model}), as `platica doctor` asks ---------------
    # OpenAI's shapes: a list object of model objects, and 404 model_not_found for an unknown id.
    # Both need the key (when ``api_key`` is set), like every OpenAI endpoint.

    def _model_routes(self) -> list[Route]:
        return [
            Route("/v1/models", self._models_list, methods=["GET"]),
            Route("/v1/models/{model:path}", self._model_retrieve, methods=["GET"]),
        ]

    @staticmethod
    def _model(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1721172741, "owned_by": "system"}

    async def _models_list(self, request: Request) -> Response:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        await self._sleep(self.latency)
        data = [self._model(model) for model in self.models]
        return JSONResponse({"object": "list", "data": data}, headers=self._headers())

    async def _model_retrieve(self, request: Request) -> Response:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        model = request.path_params["model"]
        if model not in self.models:
            return self._error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        return JSONResponse(self._model(model), headers=self._headers())


#: What FakeOpenAI's ``GET /v1/models`` lists unless told otherwise: the settings' defaults
#: (OPENAI_MODEL, TRANSCRIPTION_MODEL) and a few more.
LISTED_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4o-mini-transcribe",
    "gpt-4o-transcribe",
    "whisper-1",
)


# --------------------------------------------------------------------------------------------------
# Twilio

API_VERSION = "2010-04-01"
MAX_BODY = 1600
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")
#: Scripted create errors: behaviour -> (HTTP status, Twilio code, message)
TWILIO_ERRORS: dict[str, tuple[int, int, str]] = {
    "429": (429, 20429, "Too Many Requests"),
    "500": (500, 20500, "An internal server error has occurred"),
    "21610": (400, 21610, "Attempt to send to unsubscribed recipient"),
    "63016": (
        400,
        63016,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
    "21211": (400, 21211, "Invalid 'To' Phone Number"),
}
ASYNC_FAILURE = re.compile(r"^(failed|undelivered):(\d+)$")
#: The most media items one ``POST /_fake/media`` registers.
MAX_MEDIA_AT_ONCE = 10_000
#: Scripted Content API list errors: behaviour -> (HTTP status, Twilio code, message);
#: "content:timeout" hangs ``hang_seconds`` before answering.
CONTENT_ERRORS: dict[str, tuple[int, int, str]] = {
    "content:429": (429, 20429, "Too Many Requests"),
    "content:500": (500, 20500, "An internal server error has occurred"),
    "content:503": (503, 20503, "Service unavailable"),
}
CONTENT_BEHAVIOURS = frozenset({*CONTENT_ERRORS, "content:timeout"})
CONTENT_PAGE_SIZE = 50
CONTENT_MAX_PAGE_SIZE = 1000
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
#: Scripted media request errors: behaviour -> (HTTP status, Twilio code, message)
MEDIA_ERRORS: dict[str, tuple[int, int, str]] = {
    "media:404": (404, 20404, "The requested resource {path} was not found"),
    "media:429": (429, 20429, "Too Many Requests"),
    "media:500": (500, 20500, "An internal server error has occurred"),
}


def utf16_length(text: str) -> int:
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)


def count_segments(body: str, *, whatsapp: bool = False) -> int:
    """SMS segments: GSM-7 160/153 per segment, else UCS-2 70/67 (WhatsApp: always 1)."""
    if whatsapp or not body:
        return 1
    if all(char in GSM7_BASIC or char in GSM7_EXTENDED for char in body):
        units = sum(2 if char in GSM7_EXTENDED else 1 for char in body)
        single, concatenated = 160, 153
    else:
        units = utf16_length(body)
        single, concatenated = 70, 67
    return 1 if units <= single else math.ceil(units / concatenated)


def rfc2822(moment: datetime | None) -> str | None:
    return None if moment is None else email.utils.format_datetime(moment)


def _twilio_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    all_headers = {"Twilio-Request-Id": "RQ" + uuid.uuid4().hex}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


@dataclass
class _Message:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    media_urls: list[str]
    status_callback: str | None
    messaging_service_sid: str | None
    params: dict[str, list[str]]
    date_created: datetime
    received_at: float
    status: str = "queued"
    date_sent: datetime | None = None
    date_updated: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def whatsapp(self) -> bool:
        return self.to.startswith("whatsapp:")

    def resource(self) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent),
            "date_updated": rfc2822(self.date_updated or self.date_created),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": str(count_segments(self.body, whatsapp=self.whatsapp)),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": uri + "/Media.json", "feedback": uri + "/Feedback.json"},
            "to": self.to,
            "uri": uri + ".json",
        }

    def record(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "media_urls": list(self.media_urls),
            "status_callback": self.status_callback,
            "status": self.status,
            "params": copy.deepcopy(self.params),
            "received_at": self.received_at,
            "content_sid": next(iter(self.params.get("ContentSid", [])), None),
            "content_variables": _content_variables(self.params),
        }


def _content_variables(params: dict[str, list[str]]) -> dict[str, Any] | None:
    """A create request's ContentVariables, parsed (None when absent or not a JSON object)."""
    raw = next(iter(params.get("ContentVariables", [])), None)
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def iso8601(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Content:
    """A content (template) of Twilio's Content API, with its WhatsApp approval request."""

    sid: str
    account_sid: str
    friendly_name: str
    language: str
    variables: dict[str, str]
    types: dict[str, Any]
    approval: str | None  # the status, verbatim; None: never submitted
    rejection_reason: str
    date_created: datetime

    @property
    def body(self) -> str:
        for kind in [self.types.get("twilio/text"), *self.types.values()]:
            if isinstance(kind, dict) and isinstance(kind.get("body"), str):
                return str(kind["body"])
        return ""

    def used_variables(self) -> list[str]:
        names: list[str] = []
        for match in PLACEHOLDER.finditer(self.body):
            if match.group(1) not in names:
                names.append(match.group(1))
        return names

    def resource(self, base_url: str) -> dict[str, Any]:
        """As ``GET /v1/Content`` lists it."""
        url = f"{base_url}/v1/Content/{self.sid}"
        return {
            **self._common(),
            "url": url,
            "links": {
                "approval_create": url + "/ApprovalRequests/whatsapp",
                "approval_fetch": url + "/ApprovalRequests",
            },
        }

    def with_approvals(self) -> dict[str, Any]:
        """As ``GET /v1/ContentAndApprovals`` lists it: ``approval_requests`` is the WhatsApp
        request, flat (what ContentAndApprovalsInstance reads as a dict); empty when the content
        was never submitted."""
        requests: dict[str, Any] = {}
        if self.approval is not None:
            requests = {
                "name": self.friendly_name,
                "category": "UTILITY",
                "content_type": next(iter(self.types), "twilio/text"),
                "status": self.approval,
                "rejection_reason": self.rejection_reason,
                "allow_category_change": True,
            }
        return {**self._common(), "approval_requests": requests}

    def _common(self) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid,
            "date_created": iso8601(self.date_created),
            "date_updated": iso8601(self.date_created),
            "friendly_name": self.friendly_name,
            "language": self.language,
            "sid": self.sid,
            "types": copy.deepcopy(self.types),
            "variables": dict(self.variables),
        }


def _parse_date_filter(value: str) -> datetime | date:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return date.fromisoformat(value)


def _date_matches(moment: datetime, operator: str, bound: datetime | date) -> bool:
    """twilio-python sends ``DateSent>``/``DateSent<`` (the API's inclusive ``DateSent>=`` and
    ``DateSent<=``) and ``DateSent``, always as ``YYYY-MM-DDTHH:MM:SSZ``. Bounds compare to the
    second (or the day, for a plain date); ``DateSent`` matches the whole day (a guess: Twilio
    documents it as "messages with a specific sent_date")."""
    if operator == "=":
        day = bound.date() if isinstance(bound, datetime) else bound
        return moment.date() == day
    if isinstance(bound, datetime):
        return moment >= bound if operator == ">" else moment <= bound
    return moment.date() >= bound if operator == ">" else moment.date() <= bound


class FakeTwilio(_FakeServer):
    """The Messages resource of Twilio's API v2010, as twilio-python calls it, and inbound media.

    ``POST/GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` and
    ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``, HTTP Basic auth.

    Media (``add_media()`` registers an item and returns its URL, as a webhook's ``MediaUrl0``):
    ``GET .../Messages/{MM}/Media/{ME}`` checks Basic auth like the Messages endpoints, then
    answers 307 to ``media_storage`` (a second server, ``FakeMediaStorage``, started and stopped
    with this one) at ``/media/{ME}?x-amz-security-token=<new random token>``, like Twilio's
    redirect to its pre-signed storage host. ``GET .../Media/{ME}.json`` is the item's metadata;
    ``DELETE .../Media/{ME}.json`` answers 204 and the item is gone (then 404 everywhere).
    ``media_requests`` records every request to a Media path, ``media_deleted`` the deletions,
    and ``request_log`` every request to this fake (``/_fake/*`` aside).

    Behaviours for ``fail_next``/``fail_always``; each request takes the first queued behaviour
    of its own kind, so scripted creations and scripted media requests do not steal each other's.
    Consumed by message *creations* only:
      "429"      429, code 20429          "500"    500, code 20500
      "21610"    400, unsubscribed        "63016"  400, outside the WhatsApp window
      "21211"    400, invalid To
      "timeout"  accept and record the message, then sleep ``hang_seconds`` before answering 201
      "drop"     record nothing, sleep ``hang_seconds``, answer 503 (code 20503)
      "failed:CODE" / "undelivered:CODE"  accept (201 queued), then the message ends in that
                 status with ErrorCode CODE (e.g. "failed:63016", "undelivered:30003")

    Consumed by media requests only (once authenticated; the storage host has its own, see
    ``FakeMediaStorage``):
      "media:404"  404, code 20404 (the item exists, Twilio says it does not)
      "media:429"  429, code 20429    "media:500"  500, code 20500

    Templates (``add_content()`` registers one, ``remove_content()`` forgets it): the Content API
    on the same host (point ``TWILIO_CONTENT_BASE_URL`` at ``url`` too), ``GET /v1/Content`` and
    ``GET /v1/ContentAndApprovals``, Basic auth, ``{"contents": [...], "meta": {...}}`` paged with
    ``PageSize`` (50 by default, 1000 at most) and ``PageToken`` in ``meta.next_page_url``.
    Creating a message with ``ContentSid`` sends the content's text with ``ContentVariables``
    filled in: an unknown ContentSid is 400 code 21655, ContentVariables without a ContentSid
    21654, a variable the text uses but ContentVariables lacks (or unparsable JSON) 21656.
    Consumed by Content API lists only: "content:429", "content:500", "content:503" (Twilio's
    error body) and "content:timeout" (hang ``hang_seconds``, then answer).

    List requests (``GET .../Messages.json``, how a client looks for a message it may have sent)
    fail with ``fail_lists("500")`` (or "429"), each with Twilio's error body, until
    ``fail_lists(None)``; ``list_times`` records when each list request arrived.
    """

    BEHAVIOURS = frozenset({*TWILIO_ERRORS, "timeout", "drop", *MEDIA_ERRORS, *CONTENT_BEHAVIOURS})

    def __init__(
        self,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        *,
        latency: float = 0.0,
        hang_seconds: float = 30.0,
        callbacks: bool = False,
        callback_delay: float = 0.05,
        port: int | None = None,
        media_port: int | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        #: Post signed status callbacks ("sent", then the final status) to each StatusCallback.
        self.callbacks = callbacks
        self.callback_delay = callback_delay
        #: How accepted messages end (after "sent"), and the ErrorCode for failed/undelivered.
        self.final_status = "delivered"
        self.final_error_code: int | None = None
        self._messages: dict[str, _Message] = {}
        self._attempts: list[dict[str, list[str]]] = []
        self._list_failure: str | None = None
        self._list_times: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._media: dict[str, _Media] = {}
        self._media_requests: list[dict[str, Any]] = []
        self._media_deleted: list[str] = []
        self._request_log: list[tuple[str, str]] = []
        self._contents: dict[str, _Content] = {}
        self._init_numbers()
        #: Where media GETs redirect: Twilio's pre-signed storage host.
        self.media_storage = FakeMediaStorage(port=media_port)
        super().__init__(port=port, latency=latency, hang_seconds=hang_seconds)
        self.app.add_middleware(_RequestLog, record=self._log_request)
        self.app.add_middleware(_DateHeader, clock=self._clock)

    def _is_behaviour(self, behaviour: str) -> bool:
        return behaviour in self.BEHAVIOURS or ASYNC_FAILURE.match(behaviour) is not None

    def _next_behaviour_of(self, kind: Callable[[str], bool]) -> str | None:
        """The first queued behaviour of this kind of request (then fail_always's, if it is one)."""
        with self._lock:
            for index, behaviour in enumerate(self._failures):
                if kind(behaviour):
                    del self._failures[index]
                    return behaviour
            return self._always if self._always is not None and kind(self._always) else None

    def _log_request(self, method: str, path: str) -> None:
        if not path.startswith("/_fake/"):
            with self._lock:
                self._request_log.append((method, path))

    def start(self) -> Self:
        self.media_storage.start()
        try:
            return super().start()
        except BaseException:
            self.media_storage.stop()
            raise

    def stop(self) -> None:
        # Both wind down together: each waits out uvicorn's shutdown tick.
        self.media_storage.begin_stop()
        try:
            super().stop()
        finally:
            self.media_storage.stop()

    @property
    def url(self) -> str:
        """The API base URL (``TWILIO_API_BASE_URL``; set ``client.api.base_url`` to it)."""
        return self.base_url

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Accepted messages in order: sid, to, from, body, media_urls, status_callback, status,
        params (the whole form), received_at (time.monotonic())."""
        with self._lock:
            return [message.record() for message in self._messages.values()]

    @property
    def attempts(self) -> list[dict[str, list[str]]]:
        """Every create request's form (rejected ones included), in order."""
        with self._lock:
            return copy.deepcopy(self._attempts)

    def fail_lists(self, behaviour: str | None) -> None:
        """Answer every list request with this error ("500", "429"; None: answer normally)."""
        if behaviour is not None and behaviour not in ("500", "429"):
            raise ValueError(f"unknown list behaviour {behaviour!r}")
        with self._lock:
            self._list_failure = behaviour

    @property
    def list_times(self) -> list[float]:
        """When each list request arrived (time.monotonic()), failed ones included."""
        with self._lock:
            return list(self._list_times)

    @property
    def callback_log(self) -> list[dict[str, Any]]:
        """Status callbacks posted: sid, status, url, response status (or error), in order."""
        with self._lock:
            return [
                dict(entry) for message in self._messages.values() for entry in message.callbacks
            ]

    def add_media(self, content: bytes, content_type: str, message_sid: str | None = None) -> str:
        """Register a media item of an inbound message (a new MM… SID unless given) and return
        its URL, as Twilio puts it in the webhook's ``MediaUrl0``."""
        base = self.url  # fails until started, like the storage host's URL
        media = _Media(
            sid="ME" + uuid.uuid4().hex,
            message_sid=message_sid or "MM" + uuid.uuid4().hex,
            account_sid=self.account_sid,
            content_type=content_type,
            date_created=datetime.now(UTC).replace(microsecond=0),
        )
        with self._lock:
            self._media[media.sid] = media
        self.media_storage.put(media.sid, content, content_type)
        return base + media.path

    def add_content(
        self,
        name: str,
        body: str,
        *,
        language: str = "es",
        variables: dict[str, str] | None = None,
        approval: str | None = "approved",
        sid: str | None = None,
        rejection_reason: str = "",
        types: dict[str, Any] | None = None,
    ) -> str:
        """Register a template (a twilio/text content, unless `types` is given) and return its
        ContentSid. `variables` are its samples (by default "muestra N" for each {{N}} of
        `body`); `approval` the WhatsApp request's status as the API spells it (None: never
        submitted)."""
        content_sid = sid or "HX" + uuid.uuid4().hex
        if not CONTENT_SID.match(content_sid):
            raise ValueError(f"a ContentSid is HX and 32 hex digits, not {content_sid!r}")
        if variables is None:
            variables = {n: f"muestra {n}" for n in dict.fromkeys(PLACEHOLDER.findall(body))}
        content = _Content(
            sid=content_sid,
            account_sid=self.account_sid,
            friendly_name=name,
            language=language,
            variables=dict(variables),
            types=copy.deepcopy(types) if types is not None else {"twilio/text": {"body": body}},
            approval=approval,
            rejection_reason=rejection_reason,
            date_created=datetime.now(UTC).replace(microsecond=0),
        )
        with self._lock:
            self._contents[content_sid] = content
        return content_sid

    def remove_content(self, sid: str) -> None:
        """Forget a template, as if deleted in Twilio's console (KeyError if there is none)."""
        with self._lock:
            del self._contents[sid]

    @property
    def contents(self) -> list[dict[str, Any]]:
        """The registered templates, as ``GET /v1/ContentAndApprovals`` lists them."""
        with self._lock:
            return [content.with_approvals() for content in self._contents.values()]

    @property
    def media_requests(self) -> list[dict[str, Any]]:
        """Every request to a Media path, in order: method, path, authorised (the right Basic
        credentials), status (the answer's)."""
        with self._lock:
            return copy.deepcopy(self._media_requests)

    @property
    def media_deleted(self) -> list[str]:
        """The media SIDs deleted, in order."""
        with self._lock:
            return list(self._media_deleted)

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """(method, path) of every request this fake got, ``/_fake/*`` aside, in order."""
        with self._lock:
            return list(self._request_log)

    def message(self, sid: str) -> dict[str, Any]:
        """The current API representation of one accepted message."""
        with self._lock:
            return self._messages[sid].resource()

    def _routes(self) -> list[Route]:
        base = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
        media = base + "/{message_sid}/Media/{media_sid}"
        return [
            Route(base + ".json", self._messages_endpoint, methods=["GET", "POST"]),
            Route(base + "/{message_sid}.json", self._fetch_endpoint, methods=["GET"]),
            # The .json resource first: the file's route would take "ME….json" as a SID.
            Route(media + ".json", self._media_resource_endpoint, methods=["GET", "DELETE"]),
            Route(media, self._media_file_endpoint, methods=["GET"]),
            Route("/_fake/media", self._add_media_endpoint, methods=["POST"]),
            Route("/v1/Content", self._content_list_endpoint, methods=["GET"]),
            Route("/v1/ContentAndApprovals", self._content_list_endpoint, methods=["GET"]),
            Route("/_fake/content", self._add_content_endpoint, methods=["POST"]),
            Route("/_fake/content/{sid}", self._remove_content_endpoint, methods=["DELETE"]),
            *self._number_routes(),
        ]

    def _state(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "attempts": len(self.attempts),
            "callbacks": self.callback_log,
            "media_requests": self.media_requests,
            "media_deleted": self.media_deleted,
            "contents": self.contents,
            **self._numbers_state(),
        }

    def _clear_records(self) -> None:
        self._messages.clear()
        self._attempts.clear()
        self._list_times.clear()
        self._list_failure = None
        self._media.clear()
        self._media_requests.clear()
        self._media_deleted.clear()
        self._request_log.clear()
        self._contents.clear()
        self._clear_numbers()
        self.media_storage.reset()

    def _control(self, command: dict[str, Any]) -> None:
        if "callbacks" in command:
            self.callbacks = bool(command["callbacks"])
        if "callback_delay" in command:
            self.callback_delay = float(command["callback_delay"])
        if "media_latency" in command:
            self.media_storage.latency = float(command["media_latency"])

    async def _add_media_endpoint(self, request: Request) -> Response:
        """``add_media()`` for a fake in another process: ``POST /_fake/media?count=N`` with the
        item's bytes as the body and its type as the Content-Type registers N items, each of a
        new message; ``{"urls": [...]}``."""
        content_type = request.headers.get("content-type", "")
        count = request.query_params.get("count", "1")
        if not content_type or not count.isdigit() or not 1 <= int(count) <= MAX_MEDIA_AT_ONCE:
            return JSONResponse(
                {"error": f"a Content-Type, and count from 1 to {MAX_MEDIA_AT_ONCE}"},
                status_code=400,
            )
        content = await request.body()
        urls = [self.add_media(content, content_type) for _ in range(int(count))]
        return JSONResponse({"urls": urls})

    async def _add_content_endpoint(self, request: Request) -> Response:
        """``add_content()`` for a fake in another process: ``POST /_fake/content`` with a JSON
        object of its arguments (name and body required); ``{"sid": "HX…"}``."""
        try:
            given = json.loads(await request.body() or b"{}")
            if not isinstance(given, dict):
                raise ValueError("expected a JSON object")
            options = {
                key: given[key]
                for key in ("language", "variables", "approval", "sid", "rejection_reason", "types")
                if key in given
            }
            sid = self.add_content(str(given["name"]), str(given["body"]), **options)
        except (ValueError, TypeError, KeyError) as error:
            return JSONResponse({"error": f"invalid content: {error!r}"}, status_code=400)
        return JSONResponse({"sid": sid})

    async def _remove_content_endpoint(self, request: Request) -> Response:
        try:
            self.remove_content(request.path_params["sid"])
        except KeyError:
            return JSONResponse({"error": "no such content"}, status_code=404)
        return Response(status_code=204)

    # -- auth and errors -------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    def _check_access(self, request: Request) -> Response | None:
        if not self._authorised(request):
            return _twilio_error(
                401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        if request.path_params["account_sid"] != self.account_sid:
            return _twilio_error(
                404, 20404, f"The requested resource {request.url.path} was not found"
            )
        return None

    async def _not_found(self, request: Request) -> Response:
        return _twilio_error(404, 20404, f"The requested resource {request.url.path} was not found")

    # -- endpoints -------------------------------------------------------------------------------

    async def _messages_endpoint(self, request: Request) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        if request.method == "GET":
            with self._lock:
                self._list_times.append(time.monotonic())
                failure = self._list_failure
            await self._sleep(self.latency)
            if failure is not None:
                status, code, text = TWILIO_ERRORS[failure]
                return _twilio_error(status, code, text)
            return self._list(request)
        return await self._create(request)

    async def _fetch_endpoint(self, request: Request) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        await self._sleep(self.latency)
        with self._lock:
            message = self._messages.get(request.path_params["message_sid"])
            resource = None if message is None else message.resource()
        if resource is None:
            return _twilio_error(
                404, 20404, f"The requested resource {request.url.path} was not found"
            )
        return JSONResponse(resource)

    async def _create(self, request: Request) -> Response:
        form: dict[str, list[str]] = {}
        for name, value in parse_qsl((await request.body()).decode(), keep_blank_values=True):
            form.setdefault(name, []).append(value)
        with self._lock:
            self._attempts.append(copy.deepcopy(form))
        behaviour = self._next_behaviour_of(
            lambda name: name not in MEDIA_ERRORS and name not in CONTENT_BEHAVIOURS
        )
        await self._sleep(self.latency)
        if behaviour in TWILIO_ERRORS:
            status, code, text = TWILIO_ERRORS[behaviour]
            return _twilio_error(status, code, text)
        if behaviour == "drop":
            await self._sleep(self.hang_seconds)
            return _twilio_error(503, 20503, "Service unavailable")
        invalid = self._validate(form)
        if invalid is not None:
            return invalid
        failure = ASYNC_FAILURE.match(behaviour or "")
        message = self._accept(request, form)
        self._start_lifecycle(message.sid, failure)
        resource = message.resource()
        if behaviour == "timeout":
            await self._sleep(self.hang_seconds)
        return JSONResponse(resource, status_code=201)

    @staticmethod
    def _first(form: dict[str, list[str]], name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    def _validate(self, form: dict[str, list[str]]) -> Response | None:
        to = self._first(form, "To")
        from_ = self._first(form, "From")
        body = self._first(form, "Body") or ""
        if not to:
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not self._first(form, "MessagingServiceSid"):
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if not E164.match(to.removeprefix("whatsapp:")):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if from_ and to.startswith("whatsapp:") != from_.startswith("whatsapp:"):
            return _twilio_error(
                400,
                21910,
                "Invalid 'From' and 'To' pair. 'From' and 'To' should be of the same channel",
            )
        content_sid = self._first(form, "ContentSid")
        if content_sid is not None:
            return self._validate_content(content_sid, self._first(form, "ContentVariables"))
        if self._first(form, "ContentVariables") is not None:
            return _twilio_error(
                400, 21654, "ContentVariables may only be given together with a ContentSid"
            )
        if not body and not form.get("MediaUrl"):
            return _twilio_error(400, 21602, "Message body is required.")
        if utf16_length(body) > MAX_BODY:
            return _twilio_error(
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            )
        return None

    def _validate_content(self, sid: str, raw_variables: str | None) -> Response | None:
        with self._lock:
            content = self._contents.get(sid)
        if content is None:
            return _twilio_error(400, 21655, "The Content SID is invalid")
        invalid = _twilio_error(400, 21656, "The ContentVariables Parameter is invalid")
        try:
            values = json.loads(raw_variables) if raw_variables is not None else {}
        except ValueError:
            return invalid
        if not isinstance(values, dict) or len(values) > 100:
            return invalid
        if any(name not in values for name in content.used_variables()):
            return invalid
        return None

    def _content_body(self, form: dict[str, list[str]]) -> str | None:
        """The text a message created with a ContentSid carries: the content's, filled in."""
        sid = self._first(form, "ContentSid")
        if sid is None:
            return None
        with self._lock:
            content = self._contents[sid]
        values = _content_variables(form) or {}
        return PLACEHOLDER.sub(
            lambda match: str(values.get(match.group(1), match.group(0))), content.body
        )

    def _accept(self, request: Request, form: dict[str, list[str]]) -> _Message:
        now = datetime.now(UTC).replace(microsecond=0)
        content_body = self._content_body(form)
        message = _Message(
            sid="SM" + uuid.uuid4().hex,
            account_sid=request.path_params["account_sid"],
            to=self._first(form, "To") or "",
            from_=self._first(form, "From") or "",
            body=content_body if content_body is not None else self._first(form, "Body") or "",
            media_urls=list(form.get("MediaUrl", [])),
            status_callback=self._first(form, "StatusCallback"),
            messaging_service_sid=self._first(form, "MessagingServiceSid"),
            params=form,
            date_created=now,
            received_at=time.monotonic(),
        )
        with self._lock:
            self._messages[message.sid] = message
        return message

    def _list(self, request: Request) -> Response:
        query = request.query_params
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
            bounds = [
                (operator, _parse_date_filter(query[name]))
                for name, operator in (("DateSent", "="), ("DateSent>", ">"), ("DateSent<", "<"))
                if name in query
            ]
        except ValueError as error:
            return _twilio_error(400, 20001, f"Invalid parameter: {error}")
        to, from_ = query.get("To"), query.get("From")
        with self._lock:
            messages = list(self._messages.values())
            matching = [
                message.resource()
                for message in reversed(messages)  # newest first
                if (to is None or message.to == to)
                and (from_ is None or message.from_ == from_)
                and all(
                    # A message not yet sent is matched on its creation date (a guess).
                    _date_matches(message.date_sent or message.date_created, operator, bound)
                    for operator, bound in bounds
                )
            ]
        start = page * page_size
        records = matching[start : start + page_size]
        filters = [
            (name, query[name])
            for name in ("To", "From", "DateSent", "DateSent<", "DateSent>")
            if name in query
        ]

        def page_uri(number: int) -> str:
            params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
            return f"{request.url.path}?{urlencode(params)}"

        has_next = start + page_size < len(matching)
        return JSONResponse(
            {
                "messages": records,
                "page": page,
                "page_size": page_size,
                "start": start,
                "end": start + max(len(records) - 1, 0),
                "uri": page_uri(page),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if has_next else None,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            }
        )

    # -- the Content API (templates) ------------------------------------------------------------

    async def _content_list_endpoint(self, request: Request) -> Response:
        if not self._authorised(request):
            return _twilio_error(
                401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        behaviour = self._next_behaviour_of(lambda name: name in CONTENT_BEHAVIOURS)
        await self._sleep(self.latency)
        if behaviour == "content:timeout":
            await self._sleep(self.hang_seconds)
        elif behaviour is not None:
            status, code, text = CONTENT_ERRORS[behaviour]
            return _twilio_error(status, code, text)
        query = request.query_params
        try:
            page_size = int(query.get("PageSize", str(CONTENT_PAGE_SIZE)))
            page = int(query.get("Page", "0"))
            if not 1 <= page_size <= CONTENT_MAX_PAGE_SIZE or page < 0:
                raise ValueError("PageSize from 1 to 1000, Page from 0")
        except ValueError as error:
            return _twilio_error(400, 20001, f"Invalid paging parameter: {error}")
        with_approvals = request.url.path.endswith("ContentAndApprovals")
        base_url = str(request.base_url).rstrip("/")
        with self._lock:
            contents = list(self._contents.values())
        sids = [content.sid for content in contents]
        token = query.get("PageToken")
        start = 0
        if token is not None:
            # Twilio's tokens name the last item of the page before ("PT" + its sid).
            after = token.removeprefix("PT")
            if not token.startswith("PT") or after not in sids:
                return _twilio_error(400, 20001, "Invalid PageToken")
            start = sids.index(after) + 1
        records = contents[start : start + page_size]
        has_next = start + page_size < len(contents)

        def page_url(number: int, page_token: str | None) -> str:
            params = [("PageSize", str(page_size)), ("Page", str(number))]
            if page_token is not None:
                params.append(("PageToken", page_token))
            return f"{base_url}{request.url.path}?{urlencode(params)}"

        return JSONResponse(
            {
                "contents": [
                    content.with_approvals() if with_approvals else content.resource(base_url)
                    for content in records
                ],
                "meta": {
                    "page": page,
                    "page_size": page_size,
                    "first_page_url": page_url(0, None),
                    "previous_page_url": page_url(page - 1, None) if page > 0 else None,
                    "url": page_url(page, token),
                    "next_page_url": page_url(page + 1, "PT" + records[-1].sid)
                    if has_next
                    else None,
                    "key": "contents",
                },
            }
        )

    # -- media ---------------------------------------------------------------------------------

    async def _media_file_endpoint(self, request: Request) -> Response:
        return await self._media_endpoint(request, resource=False)

    async def _media_resource_endpoint(self, request: Request) -> Response:
        return await self._media_endpoint(request, resource=True)

    async def _media_endpoint(self, request: Request, *, resource: bool) -> Response:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "authorised": self._authorised(request),
            "status": None,
        }
        with self._lock:
            self._media_requests.append(entry)
        response = await self._answer_media(request, resource=resource)
        with self._lock:
            entry["status"] = response.status_code
        return response

    async def _answer_media(self, request: Request, *, resource: bool) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        behaviour = self._next_behaviour_of(lambda name: name in MEDIA_ERRORS)
        await self._sleep(self.latency)
        if behaviour is not None:
            status, code, text = MEDIA_ERRORS[behaviour]
            return _twilio_error(status, code, text.format(path=request.url.path))
        sid = request.path_params["media_sid"]
        with self._lock:
            media = self._media.get(sid)
            found = media is not None and media.message_sid == request.path_params["message_sid"]
            if found and request.method == "DELETE":
                del self._media[sid]
                self._media_deleted.append(sid)
        if media is None or not found:
            return _twilio_error(
                404, 20404, f"The requested resource {request.url.path} was not found"
            )
        if request.method == "DELETE":
            self.media_storage.remove(sid)
            return Response(status_code=204, headers={"Twilio-Request-Id": "RQ" + uuid.uuid4().hex})
        if resource:
            return JSONResponse(media.resource())
        # Twilio's answer to a media URL: a 307 to a pre-signed URL on its storage host.
        location = self.media_storage.sign(sid)
        return Response(
            status_code=307,
            headers={"Location": location, "Twilio-Request-Id": "RQ" + uuid.uuid4().hex},
        )

    # -- the account, its numbers and its WhatsApp senders (platica doctor, platica twilio connect)
    # ``GET /2010-04-01/Accounts/{AC}.json``: the account (``account_status``, ``account_type``).
    # ``GET .../IncomingPhoneNumbers.json?PhoneNumber=`` lists the numbers added with
    # ``add_number()`` (PhoneNumber matches any part of the number, ``*`` as a wildcard), ``GET``
    # and ``POST .../IncomingPhoneNumbers/{PN}.json`` fetch and update one (SmsUrl, SmsMethod,
    # SmsFallbackUrl, SmsFallbackMethod, StatusCallback, StatusCallbackMethod, SmsApplicationSid,
    # FriendlyName; other parameters ignored); ``number_updates`` records each update's form.
    # The Senders API (messaging.twilio.com, point TWILIO_MESSAGING_BASE_URL at ``url``):
    # ``GET /v2/Channels/Senders?Channel=whatsapp`` (Channel required) lists the senders added
    # with ``add_sender()`` as ``{"senders": [...], "meta": {...}}``; ``GET`` and ``POST
    # /v2/Channels/Senders/{XE}`` fetch and update one (a JSON body; its ``webhook`` object's
    # non-null fields replace the sender's, a method other than POST or PUT is 400);
    # ``sender_updates`` records each update's body. All with the account's Basic auth.

    # Its Date header, on every answer, is its own clock's: ``clock_offset`` seconds off ours
    # (how `platica doctor` tells a skewed clock).
    UVICORN_DATE_HEADER = False

    def _clock(self) -> float:
        return time.time() + self.clock_offset

    def _init_numbers(self) -> None:
        #: Seconds Twilio's clock (its answers' Date header) is ahead of this machine's.
        self.clock_offset = 0.0
        #: The account's ``status`` (active, suspended, closed) and ``type`` (Trial, Full).
        self.account_status = "active"
        self.account_type = "Full"
        self._numbers: dict[str, _PhoneNumber] = {}
        self._number_updates: list[dict[str, Any]] = []
        self._senders: dict[str, _Sender] = {}
        self._sender_updates: list[dict[str, Any]] = []

    def _clear_numbers(self) -> None:
        self._numbers.clear()
        self._number_updates.clear()
        self._senders.clear()
        self._sender_updates.clear()

    def _numbers_state(self) -> dict[str, Any]:
        return {
            "numbers": self.numbers,
            "number_updates": self.number_updates,
            "senders": self.senders,
            "sender_updates": self.sender_updates,
        }

    def _number_routes(self) -> list[Route]:
        account = f"/{API_VERSION}/Accounts/{{account_sid}}"
        numbers = account + "/IncomingPhoneNumbers"
        return [
            Route(account + ".json", self._account_endpoint, methods=["GET"]),
            Route(numbers + ".json", self._numbers_endpoint, methods=["GET"]),
            Route(numbers + "/{sid}.json", self._number_endpoint, methods=["GET", "POST"]),
            Route("/v2/Channels/Senders", self._senders_endpoint, methods=["GET"]),
            Route("/v2/Channels/Senders/{sid}", self._sender_endpoint, methods=["GET", "POST"]),
        ]

    def add_number(
        self,
        phone_number: str,
        *,
        sms_url: str = "",
        sms_method: str = "POST",
        status_callback: str = "",
        sms_application_sid: str = "",
    ) -> str:
        """Put a number on the account (its webhooks as given, Twilio's "" when unset) and
        return its PN… SID."""
        now = datetime.now(UTC).replace(microsecond=0)
        number = _PhoneNumber(
            sid="PN" + uuid.uuid4().hex,
            account_sid=self.account_sid,
            phone_number=phone_number,
            date_created=now,
            date_updated=now,
            sms_url=sms_url,
            sms_method=sms_method,
            status_callback=status_callback,
            sms_application_sid=sms_application_sid,
        )
        with self._lock:
            self._numbers[number.sid] = number
        return number.sid

    @property
    def numbers(self) -> list[dict[str, Any]]:
        """The account's numbers, as the API represents them now."""
        with self._lock:
            return [number.resource() for number in self._numbers.values()]

    @property
    def number_updates(self) -> list[dict[str, Any]]:
        """Every number update, in order: sid, params (its form)."""
        with self._lock:
            return copy.deepcopy(self._number_updates)

    def add_sender(
        self,
        phone_number: str,
        *,
        callback_url: str | None = None,
        status_callback_url: str | None = None,
        status: str = "ONLINE",
    ) -> str:
        """Register a WhatsApp sender (``whatsapp:<phone_number>``) and return its XE… SID."""
        sender = _Sender(
            sid="XE" + uuid.uuid4().hex,
            sender_id=f"whatsapp:{phone_number}",
            status=status,
            webhook={
                "callback_url": callback_url,
                "callback_method": "POST" if callback_url else None,
                "fallback_url": None,
                "fallback_method": None,
                "status_callback_url": status_callback_url,
                "status_callback_method": "POST" if status_callback_url else None,
            },
        )
        with self._lock:
            self._senders[sender.sid] = sender
        return sender.sid

    @property
    def senders(self) -> list[dict[str, Any]]:
        with self._lock:
            return [sender.resource(self.url) for sender in self._senders.values()]

    @property
    def sender_updates(self) -> list[dict[str, Any]]:
        """Every sender update, in order: sid, body (its JSON)."""
        with self._lock:
            return copy.deepcopy(self._sender_updates)

    async def _account_endpoint(self, request: Request) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        await self._sleep(self.latency)
        sid = self.account_sid
        uri = f"/{API_VERSION}/Accounts/{sid}"
        return JSONResponse(
            {
                "auth_token": self.auth_token,
                "date_created": "Thu, 01 Aug 2024 10:00:00 +0000",
                "date_updated": "Thu, 01 Aug 2024 10:00:00 +0000",
                "friendly_name": "My first Twilio account",
                "owner_account_sid": sid,
                "sid": sid,
                "status": self.account_status,
                "subresource_uris": {
                    "incoming_phone_numbers": uri + "/IncomingPhoneNumbers.json",
                    "messages": uri + "/Messages.json",
                },
                "type": self.account_type,
                "uri": uri + ".json",
            }
        )

    async def _numbers_endpoint(self, request: Request) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        await self._sleep(self.latency)
        query = request.query_params
        # A "+" not percent-encoded arrives as a space.
        wanted = query.get("PhoneNumber", "").replace(" ", "+")
        parts = [part for part in wanted.split("*") if part]
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
        except ValueError:
            return _twilio_error(400, 20001, "PageSize and Page must be integers")
        with self._lock:
            found = [
                number.resource()
                for number in self._numbers.values()
                if all(part in number.phone_number for part in parts)
            ]
        path = request.url.path

        def page_uri(number: int) -> str:
            params: dict[str, str | int] = {"PageSize": page_size, "Page": number}
            if wanted:
                params["PhoneNumber"] = wanted
            return f"{path}?{urlencode(params)}"

        start = page * page_size
        items = found[start : start + page_size]
        more = start + page_size < len(found)
        return JSONResponse(
            {
                "end": start + max(len(items) - 1, 0),
                "first_page_uri": page_uri(0),
                "incoming_phone_numbers": items,
                "next_page_uri": page_uri(page + 1) if more else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": page_uri(page - 1) if page else None,
                "start": start,
                "uri": page_uri(page),
            }
        )

    async def _number_endpoint(self, request: Request) -> Response:
        denied = self._check_access(request)
        if denied is not None:
            return denied
        form: dict[str, str] = {}
        if request.method == "POST":
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        await self._sleep(self.latency)
        sid = request.path_params["sid"]
        with self._lock:
            number = self._numbers.get(sid)
            if number is None:
                return _twilio_error(
                    404, 20404, f"The requested resource {request.url.path} was not found"
                )
            if request.method == "POST":
                for name in ("SmsUrl", "SmsFallbackUrl", "StatusCallback"):
                    value = form.get(name)
                    if value and not re.match(r"^https?://[^/\s]+", value):
                        return _twilio_error(400, 21502, f"{name} is not a valid URL: {value}")
                for name, attribute in _PhoneNumber.UPDATABLE.items():
                    if name in form:
                        setattr(number, attribute, form[name])
                number.date_updated = datetime.now(UTC).replace(microsecond=0)
                self._number_updates.append({"sid": sid, "params": dict(form)})
            return JSONResponse(number.resource())

    def _check_auth_only(self, request: Request) -> Response | None:
        """The v2 APIs carry no account in their paths: the Basic credentials decide."""
        if not self._authorised(request):
            return _twilio_error(
                401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        return None

    async def _senders_endpoint(self, request: Request) -> Response:
        denied = self._check_auth_only(request)
        if denied is not None:
            return denied
        await self._sleep(self.latency)
        channel = request.query_params.get("Channel")
        if not channel:
            return _twilio_error(400, 20001, "Missing required parameter Channel in the request")
        with self._lock:
            found = [
                sender.resource(self.url)
                for sender in self._senders.values()
                if sender.sender_id.startswith(channel.lower() + ":")
            ]
        url = f"{self.url}/v2/Channels/Senders?Channel={channel}&PageSize=50&Page=0"
        return JSONResponse(
            {
                "senders": found,
                "meta": {
                    "page": 0,
                    "page_size": 50,
                    "first_page_url": url,
                    "previous_page_url": None,
                    "url": url,
                    "next_page_url": None,
                    "key": "senders",
                },
            }
        )

    async def _sender_endpoint(self, request: Request) -> Response:
        denied = self._check_auth_only(request)
        if denied is not None:
            return denied
        body: Any = None
        if request.method == "POST":
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return _twilio_error(400, 20001, "The request body must be a JSON object")
        await self._sleep(self.latency)
        sid = request.path_params["sid"]
        with self._lock:
            sender = self._senders.get(sid)
            if sender is None:
                return _twilio_error(
                    404, 20404, f"The requested resource {request.url.path} was not found"
                )
            if body is not None:
                webhook = body.get("webhook") or {}
                if not isinstance(webhook, dict):
                    return _twilio_error(400, 20001, "webhook must be an object")
                for name in ("callback_method", "fallback_method", "status_callback_method"):
                    method = webhook.get(name)
                    if method is not None and method not in ("POST", "PUT"):
                        return _twilio_error(400, 20001, f"{name} must be POST or PUT")
                for name, value in webhook.items():
                    if name in sender.webhook and value is not None:
                        sender.webhook[name] = value
                self._sender_updates.append({"sid": sid, "body": copy.deepcopy(body)})
            return JSONResponse(sender.resource(self.url))

    # -- message lifecycle and status callbacks --------------------------------------------------

    def _start_lifecycle(self, sid: str, failure: re.Match[str] | None) -> None:
        task = asyncio.get_running_loop().create_task(self._lifecycle(sid, failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_status(self, sid: str, status: str, error_code: int | None = None) -> _Message:
        now = datetime.now(UTC).replace(microsecond=0)
        with self._lock:
            message = self._messages[sid]
            message.status = status
            message.date_updated = now
            if status == "sent" and message.date_sent is None:
                message.date_sent = now
            if error_code is not None:
                message.error_code = error_code
            return message

    async def _lifecycle(self, sid: str, failure: re.Match[str] | None) -> None:
        """queued -> sent -> delivered (or the scripted failure), posting callbacks if enabled."""
        try:
            final: str
            code: int | None
            if failure is not None:
                final, code = failure.group(1), int(failure.group(2))
            else:
                final, code = self.final_status, self.final_error_code
            if final != "failed":  # a message that fails outright is never "sent"
                await self._callback(self._set_status(sid, "sent"), "sent", None)
                await self._sleep(self.callback_delay)
            if final in ("failed", "undelivered") and code is None:
                code = 30008
            await self._callback(self._set_status(sid, final, code), final, code)
        except Exception:
            logger.exception("FakeTwilio: lifecycle of %s failed", sid)

    async def _callback(self, message: _Message, status: str, error_code: int | None) -> None:
        url = message.status_callback
        if not self.callbacks or not url or self._stopping.is_set():
            return
        params = forms.status_form(
            Channel.whatsapp if message.whatsapp else Channel.sms,
            message.from_.removeprefix("whatsapp:"),
            message.to.removeprefix("whatsapp:"),
            message.sid,
            status,
            account_sid=message.account_sid,
            error_code=None if error_code is None else str(error_code),
        )
        signature = forms.signature(params, self.auth_token, url)
        headers = {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        entry: dict[str, Any] = {"sid": message.sid, "status": status, "url": url}
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(url, data=params, headers=headers)
            entry["response_status"] = response.status_code
        except httpx.HTTPError as error:
            logger.warning("FakeTwilio: status callback to %s failed: %r", url, error)
            entry["error"] = repr(error)
        with self._lock:
            message.callbacks.append(entry)


@dataclass
class _PhoneNumber:
    """An IncomingPhoneNumber of the account: what ``platica twilio connect`` reads and sets."""

    #: Update parameters -> attributes.
    UPDATABLE: ClassVar[dict[str, str]] = {
        "SmsUrl": "sms_url",
        "SmsMethod": "sms_method",
        "SmsFallbackUrl": "sms_fallback_url",
        "SmsFallbackMethod": "sms_fallback_method",
        "StatusCallback": "status_callback",
        "StatusCallbackMethod": "status_callback_method",
        "SmsApplicationSid": "sms_application_sid",
        "FriendlyName": "friendly_name",
    }

    sid: str
    account_sid: str
    phone_number: str
    date_created: datetime
    date_updated: datetime
    sms_url: str = ""
    sms_method: str = "POST"
    sms_fallback_url: str = ""
    sms_fallback_method: str = "POST"
    status_callback: str = ""
    status_callback_method: str = "POST"
    sms_application_sid: str = ""
    friendly_name: str = ""

    def resource(self) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": API_VERSION,
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Inactive",
            "friendly_name": self.friendly_name or self.phone_number,
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_application_sid": self.sms_application_sid,
            "sms_fallback_method": self.sms_fallback_method,
            "sms_fallback_url": self.sms_fallback_url,
            "sms_method": self.sms_method,
            "sms_url": self.sms_url,
            "status": "in-use",
            "status_callback": self.status_callback,
            "status_callback_method": self.status_callback_method,
            "subresource_uris": {
                "assigned_add_ons": uri + "/AssignedAddOns.json",
            },
            "trunk_sid": None,
            "uri": uri + ".json",
            "voice_application_sid": "",
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": None,
            "voice_method": "POST",
            "voice_receive_mode": "voice",
            "voice_url": None,
        }


@dataclass
class _Sender:
    """A WhatsApp sender of the Senders API (v2)."""

    sid: str
    sender_id: str
    status: str
    webhook: dict[str, str | None]

    def resource(self, base_url: str) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "status": self.status,
            "sender_id": self.sender_id,
            "configuration": {"waba_id": "1234567890", "verification_method": "sms"},
            "webhook": dict(self.webhook),
            "profile": {"name": "Plática"},
            "properties": {"quality_rating": "HIGH", "messaging_limit": "1K"},
            "offline_reasons": None,
            "url": f"{base_url}/v2/Channels/Senders/{self.sid}",
        }


@dataclass
class _Media:
    sid: str
    message_sid: str
    account_sid: str
    content_type: str
    date_created: datetime

    @property
    def path(self) -> str:
        return (
            f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.message_sid}"
            f"/Media/{self.sid}"
        )

    def resource(self) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid,
            "content_type": self.content_type,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_created),
            "parent_sid": self.message_sid,
            "sid": self.sid,
            "uri": self.path + ".json",
        }


class _DateHeader:
    """ASGI middleware: every answer's ``Date`` header, from ``clock()`` (seconds since the epoch)."""

    def __init__(self, app: Callable[..., Any], clock: Callable[[], float]) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Any) -> None:
            if message["type"] == "http.response.start":
                date = email.utils.formatdate(self.clock(), usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                message = {**message, "headers": [*headers, (b"date", date)]}
            await send(message)

        await self.app(scope, receive, send_with_date)


class _RequestLog:
    """ASGI middleware: tells ``record`` the method and path of every HTTP request."""

    def __init__(self, app: Callable[..., Any], record: Callable[[str, str], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.record(scope["method"], scope["path"])
        await self.app(scope, receive, send)


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


class FakeMediaStorage(_FakeServer):
    """The pre-signed storage host Twilio's media URLs redirect to (``media.twiliocdn.com``, S3
    behind it): ``GET /media/{MediaSid}?x-amz-security-token=...``, with a token only
    ``sign()`` (FakeTwilio's redirect) hands out. Like S3, it refuses (400 InvalidArgument) a
    request that also carries an ``Authorization`` header: two auth mechanisms.

    ``requests`` records every request (its headers included, so a test can check that Twilio's
    credentials never got here) and how its answer went: ``bytes_sent``, ``completed`` (the
    whole body went out) and ``finished`` (the answer is over, whole or cut short). A body goes
    out ``chunk_size`` bytes at a time, each after ``chunk_seconds``, so that a client that stops
    reading early is seen to have stopped (and one that reads nothing waits).

    Behaviours for ``fail_next``/``fail_always`` (consumed by each request):
      "500"      500 InternalError (S3's XML error body)
      "403"      403 AccessDenied (as for an expired signature)
      "timeout"  sleep ``hang_seconds`` before answering normally
      "chunked"  the body without a Content-Length (Transfer-Encoding: chunked)
    """

    BEHAVIOURS = frozenset({"500", "403", "timeout", "chunked"})
    TWO_AUTHS = (
        "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
        "query string parameter or the Authorization header should be specified"
    )

    def __init__(
        self, *, latency: float = 0.0, hang_seconds: float = 30.0, port: int | None = None
    ) -> None:
        self.chunk_size = 64 * 1024
        self.chunk_seconds = 0.0
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._tokens: dict[str, str] = {}
        self._requests: list[dict[str, Any]] = []
        super().__init__(port=port, latency=latency, hang_seconds=hang_seconds)

    def put(self, media_sid: str, content: bytes, content_type: str) -> None:
        with self._lock:
            self._objects[media_sid] = (content, content_type)

    def sign(self, media_sid: str) -> str:
        """A new pre-signed URL of the object."""
        token = uuid.uuid4().hex + uuid.uuid4().hex
        with self._lock:
            self._tokens[token] = media_sid
        query = urlencode({"x-amz-security-token": token})
        return f"{self.base_url}/media/{media_sid}?{query}"

    def remove(self, media_sid: str) -> None:
        """The object is gone, and so is every URL signed for it."""
        with self._lock:
            self._objects.pop(media_sid, None)
            for token in [token for token, sid in self._tokens.items() if sid == media_sid]:
                del self._tokens[token]

    def begin_stop(self) -> None:
        """Ask the server to stop without waiting (``stop()`` waits)."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request, in order: method, path, query, headers (lower-case names), status,
        bytes_sent, completed, finished."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def _routes(self) -> list[Route]:
        return [Route("/media/{media_sid}", self._object_endpoint, methods=["GET"])]

    def _state(self) -> dict[str, Any]:
        return {"requests": self.requests}

    def _clear_records(self) -> None:
        self._requests.clear()
        self._objects.clear()
        self._tokens.clear()

    def _record(self, request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "status": None,
            "bytes_sent": 0,
            "completed": False,
            "finished": False,
        }
        with self._lock:
            self._requests.append(entry)
        return entry

    def _answer(self, entry: dict[str, Any], response: Response) -> Response:
        with self._lock:
            entry["status"] = response.status_code
            entry["finished"] = True
        return response

    async def _not_found(self, request: Request) -> Response:
        entry = self._record(request)
        return self._answer(entry, _s3_error(404, "NoSuchKey", "The specified key does not exist."))

    async def _object_endpoint(self, request: Request) -> Response:
        entry = self._record(request)
        behaviour = self._next_behaviour()
        await self._sleep(self.latency)
        if behaviour == "timeout":
            await self._sleep(self.hang_seconds)
        if "authorization" in request.headers:
            return self._answer(entry, _s3_error(400, "InvalidArgument", self.TWO_AUTHS))
        if behaviour == "500":
            return self._answer(
                entry, _s3_error(500, "InternalError", "We encountered an internal error.")
            )
        media_sid = request.path_params["media_sid"]
        with self._lock:
            signed_for = self._tokens.get(request.query_params.get("x-amz-security-token", ""))
            stored = self._objects.get(media_sid)
        if behaviour == "403" or signed_for != media_sid:
            return self._answer(entry, _s3_error(403, "AccessDenied", "Access Denied"))
        if stored is None:
            return self._answer(
                entry, _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            )
        content, content_type = stored
        headers = {"Content-Type": content_type, "x-amz-request-id": uuid.uuid4().hex[:16]}
        if behaviour != "chunked":
            headers["Content-Length"] = str(len(content))
        with self._lock:
            entry["status"] = 200
        return StreamingResponse(self._stream(entry, content), headers=headers)

    async def _stream(self, entry: dict[str, Any], content: bytes) -> AsyncIterator[bytes]:
        try:
            for start in range(0, len(content), self.chunk_size):
                await self._sleep(self.chunk_seconds)
                chunk = content[start : start + self.chunk_size]
                yield chunk
                with self._lock:
                    entry["bytes_sent"] += len(chunk)
            with self._lock:
                entry["completed"] = True
        finally:
            with self._lock:
                entry["finished"] = True


# --------------------------------------------------------------------------------------------------
# Command line: python -m tests.fakes {openai,twilio} --port N [--latency S]


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes", description="Serve a fake OpenAI or Twilio API."
    )
    parser.add_argument("service", choices=["openai", "twilio"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--hang-seconds", type=float, default=30.0, help="for 'timeout'/'drop'")
    parser.add_argument("--fail-always", default=None, help="a behaviour for every request")
    parser.add_argument("--api-key", default=None, help="openai: required bearer token")
    parser.add_argument("--account-sid", default=ACCOUNT_SID, help="twilio")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="twilio")
    parser.add_argument("--callbacks", action="store_true", help="twilio: post status callbacks")
    parser.add_argument("--callback-delay", type=float, default=0.05, help="twilio")
    parser.add_argument(
        "--media-port", type=int, default=None, help="twilio: the media storage host's port"
    )
    parser.add_argument(
        "--media-latency",
        type=float,
        default=0.0,
        help="twilio: seconds before the media storage host answers",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(None if argv is None else list(argv))

    fake: _FakeServer
    storage: FakeMediaStorage | None = None
    if args.service == "openai":
        fake = FakeOpenAI(
            latency=args.latency,
            hang_seconds=args.hang_seconds,
            api_key=args.api_key,
            port=args.port,
        )
    else:
        fake = FakeTwilio(
            args.account_sid,
            args.auth_token,
            latency=args.latency,
            hang_seconds=args.hang_seconds,
            callbacks=args.callbacks,
            callback_delay=args.callback_delay,
            port=args.port,
            media_port=args.media_port,
        )
        # Where its media URLs redirect: served from a thread of this process.
        storage = fake.media_storage
        storage.latency = args.media_latency
    fake.fail_always(args.fail_always)
    if storage is not None:
        storage.start()
    try:
        uvicorn.run(
            fake.app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    finally:
        if storage is not None:
            storage.stop()


if __name__ == "__main__":
    main()
