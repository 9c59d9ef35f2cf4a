"""The load generator: precomputed, correctly signed Twilio webhooks, sent open- or closed-loop.

Every request is built and signed before the clock starts (signing inside the timed loop would
measure the generator, not the server). Two clients send them:

* ``RawClient`` (the default): HTTP/1.1 over asyncio streams with keep-alive connections, writing
  the precomputed request bytes and reading the status line, headers and Content-Length body.
  It costs a few tens of microseconds of CPU per request, so on a 2-core machine the generator
  steals little from the server it measures.
* ``HttpxClient``: the same requests through ``httpx.AsyncClient``, for comparison
  (``--client httpx``); it costs several times more CPU per request.

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened to the earlier ones, and its
latency is counted from when it was due, not from when it was sent, so a stalled server (or
generator) shows up in the latency instead of silently lowering the rate (no coordinated
omission). Closed loop: ``concurrency`` senders each send the next request as soon as the
previous answer is in, for a fixed time: the highest throughput at that concurrency.

Who sends what: by default every message comes from a new sender (``SenderNumbers``). The
one-account load (``bursty_plan``) is more like a real business's traffic: a share of the senders
write a few short messages in a row, a fraction of a second apart, which the account's debounce
answers with one reply.

The generator's garbage collector is off while it sends (``paused_gc``): a full collection of the
bench process's heap stalls its event loop for tens of milliseconds, which the open loop would
rightly count as latency, but it is the generator's, not the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

import httpx

# The test suite's Twilio identity (tests/factories.py): the same credentials the server gets.
from tests.factories import AUTH_TOKEN, SMS_NUMBER, inbound_form, sign

from bench.stats import percentile

REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 512
# uvicorn closes a keep-alive connection idle for 5 s; like any HTTP client, do not reuse one
# that old (a request written to a connection the server just closed fails at once).
KEEPALIVE_EXPIRY = 4.0


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    sid: str
    sender: str
    path: str
    body: bytes
    headers: dict[str, str]
    raw: bytes  # the whole HTTP/1.1 request, for RawClient


@dataclass(slots=True)
class Sample:
    """One request's fate, in time.monotonic() seconds (system-wide on Linux)."""

    request: WebhookRequest
    due: float
    sent: float
    done: float
    status: int  # HTTP status, or -1 for a connection error or a timeout

    @property
    def latency_ms(self) -> float:
        """From when it was due (open loop) or sent (closed loop) to the full response."""
        return (self.done - self.due) * 1000.0


class SenderNumbers:
    """Distinct E.164 senders for the whole run: no sender writes in two phases, so each phase's
    replies are told apart by their recipients."""

    def __init__(self, prefix: str = "+1202") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def take(self, count: int) -> list[str]:
        return [f"{self._prefix}{next(self._counter):07d}" for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Burst:
    """Part of the senders write several short messages in a row: `share` of them send between
    `sizes[0]` and `sizes[1]` messages, `gap` seconds apart."""

    share: float = 0.1
    sizes: tuple[int, int] = (3, 5)
    gap: float = 0.3
    seed: int = 12


def bursty_plan(
    count: int, rate: float, new_sender: Callable[[], str], burst: Burst
) -> list[tuple[str, str]]:
    """(sender, body) for each of `count` messages arriving at `rate` per second (message i at
    i / rate): a new sender in each free slot, and for `burst.share` of them the next messages
    of their burst in the slots `burst.gap` seconds on (or the first free one after). A burst
    that would run past the end is cut short. The arrival rate stays exactly `rate`."""
    rng = random.Random(burst.seed)
    step = max(1, round(burst.gap * rate))
    slots: list[tuple[str, str] | None] = [None] * count
    for index in range(count):
        if slots[index] is not None:
            continue
        sender = new_sender()
        size = rng.randint(*burst.sizes) if rng.random() < burst.share else 1
        positions = [index]
        while len(positions) < size:
            position = positions[-1] + step
            while position < count and slots[position] is not None:
                position += 1
            if position >= count:
                break
            positions.append(position)
            slots[position] = (sender, "")  # reserved
        for number, position in enumerate(positions, 1):
            body = f"Hola, soy {sender}"
            if len(positions) > 1:
                body += f" ({number}/{len(positions)})"
            slots[position] = (sender, body)
    return [slot for slot in slots if slot is not None]


def single_plan(senders: Sequence[str]) -> list[tuple[str, str]]:
    """One message from each sender."""
    return [(sender, f"Hola, soy {sender}") for sender in senders]


def build_requests(
    base_url: str,
    plan: Sequence[tuple[str, str]],
    *,
    path: str = "/webhook/sms",
    to: str = SMS_NUMBER,
    token: str = AUTH_TOKEN,
    channel: str = "sms",
    media: Sequence[tuple[str, str]] | None = None,
) -> list[WebhookRequest]:
    """One signed inbound webhook per (sender, body) of `plan` (SMS, or `channel`), as Twilio
    would post it to base_url + path, to the account's number `to`; with `media`, message i
    carries the item (url, content type) media[i], as WhatsApp sends one per message. Each
    request's `sender` is the form's From ("whatsapp:+1…" on WhatsApp), as replies go to it."""
    if media is not None and len(media) != len(plan):
        raise ValueError("one media item per message of the plan")
    host = base_url.removeprefix("http://")
    url = base_url + path
    requests = []
    for index, (sender, text) in enumerate(plan):
        extra: dict[str, str] = {}
        if media is not None:
            item_url, content_type = media[index]
            extra = {"NumMedia": "1", "MediaUrl0": item_url, "MediaContentType0": content_type}
            if channel == "whatsapp":
                # WhatsApp names the item's kind ("audio" for a voice note).
                kind = content_type.partition("/")[0]
                extra["MessageType"] = kind if kind in ("image", "audio", "video") else "document"
        form = inbound_form(channel, sender=sender, to=to, body=text, **extra)
        body = urlencode(form).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(url, form, token),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        requests.append(WebhookRequest(form["MessageSid"], form["From"], path, body, headers, raw))
    return requests


class Client(Protocol):
    async def send(self, request: WebhookRequest) -> int: ...

    async def aclose(self) -> None: ...


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RawClient:
    """Minimal HTTP/1.1 keep-alive client for precomputed requests (Content-Length bodies)."""

    def __init__(self, host: str, port: int, max_connections: int = MAX_CONNECTIONS) -> None:
        self._host = host
        self._port = port
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._all: set[_Connection] = set()

    def _reusable(self) -> _Connection | None:
        """The most recently used idle connection, dropping any the server may have closed."""
        while self._idle:
            connection = self._idle.pop()
            if time.monotonic() - connection.idle_since < KEEPALIVE_EXPIRY:
                return connection
            self._all.discard(connection)
            connection.close()
        return None

    async def send(self, request: WebhookRequest) -> int:
        async with self._slots:
            connection = self._reusable()
            if connection is None:
                reader, writer = await asyncio.open_connection(self._host, self._port)
                connection = _Connection(reader, writer)
                self._all.add(connection)
            try:
                connection.writer.write(request.raw)
                head = await connection.reader.readuntil(b"\r\n\r\n")
                status, length, keep_alive = _parse_head(head)
                if length:
                    await connection.reader.readexactly(length)
            except BaseException:
                self._all.discard(connection)
                connection.close()
                raise
            if keep_alive:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                self._all.discard(connection)
                connection.close()
            return status

    async def aclose(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not expected from a webhook")
    return status, length, keep_alive


class HttpxClient:
    """The same requests through httpx.AsyncClient (more CPU per request in the generator)."""

    def __init__(self, base_url: str, max_connections: int = MAX_CONNECTIONS) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT)

    async def send(self, request: WebhookRequest) -> int:
        response = await self._client.post(
            request.path, content=request.body, headers=request.headers
        )
        return response.status_code

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(kind: str, base_url: str) -> Client:
    if kind == "httpx":
        return HttpxClient(base_url)
    host, _, port = base_url.removeprefix("http://").partition(":")
    return RawClient(host, int(port))


async def _timed(client: Client, request: WebhookRequest, due: float) -> Sample:
    sent = time.monotonic()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status = await client.send(request)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, RuntimeError):
        status = -1
    return Sample(request, due, sent, time.monotonic(), status)


@dataclass
class PhaseResult:
    """What one load phase measured."""

    mode: str  # "open" or "closed"
    target_rate: float | None
    concurrency: int | None
    started: float
    duration: float  # from the first due time to the last response
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.status != 200)

    @property
    def achieved_rate(self) -> float:
        return len(self.ok) / self.duration if self.duration > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile([s.latency_ms for s in self.ok], q)

    def max_latency(self) -> float:
        return max((s.latency_ms for s in self.ok), default=float("nan"))

    def generator_lag_p99(self) -> float:
        """How late the generator itself sent requests (open loop); large means it is the limit."""
        return percentile([(s.sent - s.due) * 1000.0 for s in self.samples], 99)

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "mode": self.mode,
            "target_rate": self.target_rate,
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "ok": len(self.ok),
            "errors": self.errors,
            "achieved_rate": self.achieved_rate,
            "p50_ms": self.latency(50),
            "p90_ms": self.latency(90),
            "p99_ms": self.latency(99),
            "max_ms": self.max_latency(),
            "generator_lag_p99_ms": self.generator_lag_p99(),
            "duration_s": self.duration,
        }


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection inside the block (the heap collected just before it)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def open_loop(client: Client, requests: Sequence[WebhookRequest], rate: float) -> PhaseResult:
    """Send every request at a fixed arrival rate; latency counts from each request's due time."""
    tasks: list[asyncio.Task[Sample]] = []
    with paused_gc():
        start = time.monotonic() + 0.02
        for index, request in enumerate(requests):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_timed(client, request, due)))
        samples = list(await asyncio.gather(*tasks))
    end = max((s.done for s in samples), default=start)
    return PhaseResult("open", rate, None, start, end - start, samples)


async def closed_loop(
    client: Client, requests: Iterator[WebhookRequest], concurrency: int, seconds: float
) -> PhaseResult:
    """`concurrency` senders back to back for `seconds` (bounded by the requests given, too)."""
    samples: list[Sample] = []

    async def sender(stop_at: float) -> None:
        while time.monotonic() < stop_at:
            request = next(requests, None)
            if request is None:
                return
            samples.append(await _timed(client, request, time.monotonic()))

    with paused_gc():
        start = time.monotonic()
        await asyncio.gather(*(sender(start + seconds) for _ in range(concurrency)))
    end = max((s.done for s in samples), default=start)
    return PhaseResult("closed", None, concurrency, start, end - start, samples)
