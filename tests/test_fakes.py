"""The fakes in tests/fakes.py are protocol-faithful: the official SDKs parse what they answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import openai
import pytest
import uvicorn
from openai import AsyncOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from platica.media.fetch import TwilioMedia
from tests.conftest import make_settings
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, CONTACT, SMS_NUMBER, WHATSAPP_NUMBER
from tests.fakes import FakeOpenAI, FakeTwilio, count_segments
from tests.media.samples import ogg_opus
from tests.polling import eventually

# aiohttp 3.14 deprecates the BasicAuth object that twilio 9.13's AsyncTwilioHttpClient passes.
pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# OpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@contextlib.asynccontextmanager
async def openai_client(fake: FakeOpenAI, **options: Any) -> AsyncIterator[AsyncOpenAI]:
    settings: dict[str, Any] = {"api_key": "test", "max_retries": 0, "timeout": 2}
    settings.update(options)
    async with AsyncOpenAI(base_url=fake.url, **settings) as client:
        yield client


MESSAGES: list[Any] = [
    {"role": "system", "content": "You are Plática."},
    {"role": "user", "content": "Hola"},
    {"role": "assistant", "content": "¡Hola! ¿En qué te ayudo?"},
    {"role": "user", "content": "¿Abrís el domingo?"},
]


async def test_openai_echoes_the_last_user_message_with_usage(fake_openai: FakeOpenAI) -> None:
    async with openai_client(fake_openai) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=200
        )

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: ¿Abrís el domingo?"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion._request_id is not None
    assert completion._request_id.startswith("req_")

    [request] = fake_openai.requests
    assert request["model"] == "gpt-4o-mini"
    assert request["messages"] == MESSAGES
    assert request["max_completion_tokens"] == 200


async def test_openai_reply_is_settable_and_token_limit_truncates(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply = lambda messages: f"{len(messages)} messages " + "bla " * 100
    async with openai_client(fake_openai) as client:
        full = await client.chat.completions.create(model="m", messages=MESSAGES)
        cut = await client.chat.completions.create(
            model="m", messages=MESSAGES, max_completion_tokens=5
        )

    assert full.choices[0].message.content is not None
    assert full.choices[0].message.content.startswith("4 messages bla")
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == full.choices[0].message.content[:20]


@pytest.mark.parametrize(
    ("behaviour", "error_type", "status", "code"),
    [
        ("429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, 429, "insufficient_quota"),
        ("500", openai.InternalServerError, 500, None),
        ("400", openai.BadRequestError, 400, "context_length_exceeded"),
    ],
)
async def test_openai_scripted_errors_map_to_sdk_exceptions(
    fake_openai: FakeOpenAI,
    behaviour: str,
    error_type: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    fake_openai.fail_next(behaviour)
    async with openai_client(fake_openai) as client:
        with pytest.raises(error_type) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        # The failure was consumed: the next request is answered normally.
        recovered = await client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.request_id is not None
    assert recovered.choices[0].message.content == "Echo: ¿Abrís el domingo?"
    assert len(fake_openai.requests) == 2
    assert fake_openai.pending_failures == []


async def test_openai_rate_limit_headers(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next("429", "quota")
    async with openai_client(fake_openai) as client:
        with pytest.raises(openai.RateLimitError) as rate_limited:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as out_of_quota:
            await client.chat.completions.create(model="m", messages=MESSAGES)

    assert rate_limited.value.response.headers["retry-after"] == "0"
    assert rate_limited.value.type == "requests"
    assert "retry-after" not in out_of_quota.value.response.headers
    assert out_of_quota.value.type == "insufficient_quota"


async def test_openai_sdk_retries_a_429_and_honours_retry_after(fake_openai: FakeOpenAI) -> None:
    fake_openai.retry_after = "0.01"
    fake_openai.fail_next("429")
    async with openai_client(fake_openai, max_retries=1) as client:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)

    assert completion.choices[0].message.content == "Echo: ¿Abrís el domingo?"
    assert len(fake_openai.requests) == 2


async def test_openai_timeout_raises_api_timeout_error() -> None:
    with FakeOpenAI(hang_seconds=5) as fake:
        fake.fail_next("timeout")
        started = time.monotonic()
        async with openai_client(fake, timeout=0.5) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
        assert time.monotonic() - started < 3
        assert len(fake.requests) == 1
        stopping = time.monotonic()
    # Stopping does not wait for the hung handler.
    assert time.monotonic() - stopping < 3


async def test_openai_refusal_and_empty_content(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next("refusal", "empty")
    async with openai_client(fake_openai) as client:
        refused = await client.chat.completions.create(model="m", messages=MESSAGES)
        empty = await client.chat.completions.create(model="m", messages=MESSAGES)

    assert refused.choices[0].message.content is None
    assert refused.choices[0].message.refusal == FakeOpenAI.REFUSAL
    assert refused.choices[0].finish_reason == "stop"
    assert empty.choices[0].message.content == ""
    assert empty.choices[0].finish_reason == "stop"


async def test_openai_fail_always_until_cleared(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_always("500")
    async with openai_client(fake_openai) as client:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
        fake_openai.fail_always(None)
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(fake_openai.requests) == 4


async def test_openai_api_key_is_checked_when_configured() -> None:
    with FakeOpenAI(api_key="sk-right") as fake:
        async with openai_client(fake, api_key="sk-wrong") as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(model="m", messages=MESSAGES)
        async with openai_client(fake, api_key="sk-right") as client:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"


def test_unknown_behaviours_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown behaviour"):
        FakeOpenAI().fail_next("418")
    with pytest.raises(ValueError, match="unknown behaviour"):
        FakeTwilio().fail_always("quota")
    FakeTwilio().fail_next("failed:63016", "undelivered:30003", "timeout")
    with pytest.raises(RuntimeError, match="no port until started"):
        _ = FakeOpenAI().url


# --------------------------------------------------------------------------------------------------
# Twilio


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@contextlib.asynccontextmanager
async def twilio_client(
    fake: FakeTwilio, auth_token: str = AUTH_TOKEN, **options: Any
) -> AsyncIterator[Client]:
    settings: dict[str, Any] = {"timeout": 2}
    settings.update(options)
    async with AsyncTwilioHttpClient(**settings) as http_client:
        client = Client(ACCOUNT_SID, auth_token, http_client=http_client)
        client.api.base_url = fake.url
        yield client


async def test_twilio_create_returns_a_message_instance(fake_twilio: FakeTwilio) -> None:
    async with twilio_client(fake_twilio) as client:
        message = await client.messages.create_async(
            to=CONTACT, from_=SMS_NUMBER, body="hi", status_callback="http://127.0.0.1:9/x"
        )

    assert message.sid.startswith("SM")
    assert len(message.sid) == 34
    assert message.account_sid == ACCOUNT_SID
    assert message.status == "queued"
    assert message.direction == "outbound-api"
    assert (message.to, message.from_, message.body) == (CONTACT, SMS_NUMBER, "hi")
    assert (message.num_segments, message.num_media) == ("1", "0")
    assert message.api_version == "2010-04-01"
    assert message.error_code is None
    assert message.price is None
    assert message.date_sent is None
    assert isinstance(message.date_created, datetime)
    assert abs(datetime.now(UTC) - message.date_created) < timedelta(minutes=1)
    assert message.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}.json"

    [sent] = fake_twilio.sent
    assert sent["sid"] == message.sid
    assert (sent["to"], sent["from"], sent["body"]) == (CONTACT, SMS_NUMBER, "hi")
    assert sent["status_callback"] == "http://127.0.0.1:9/x"
    assert sent["received_at"] <= time.monotonic()


async def test_twilio_create_whatsapp_with_media_and_validity(fake_twilio: FakeTwilio) -> None:
    async with twilio_client(fake_twilio) as client:
        message = await client.messages.create_async(
            to=f"whatsapp:{CONTACT}",
            from_=f"whatsapp:{WHATSAPP_NUMBER}",
            body="foto",
            media_url=["https://example.com/1.jpg", "https://example.com/2.jpg"],
            validity_period=600,
        )

    assert message.to == f"whatsapp:{CONTACT}"
    assert message.num_media == "2"
    [sent] = fake_twilio.sent
    assert sent["media_urls"] == ["https://example.com/1.jpg", "https://example.com/2.jpg"]
    assert sent["params"]["ValidityPeriod"] == ["600"]


async def test_twilio_wrong_token_is_a_401(fake_twilio: FakeTwilio) -> None:
    async with twilio_client(fake_twilio, auth_token="f" * 32) as client:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="hi")
    assert caught.value.status == 401
    assert caught.value.code == 20003
    assert fake_twilio.sent == []


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        ("21610", 400, 21610),
        ("429", 429, 20429),
        ("63016", 400, 63016),
        ("21211", 400, 21211),
        ("500", 500, 20500),
    ],
)
async def test_twilio_scripted_errors_raise_twilio_rest_exception(
    fake_twilio: FakeTwilio, behaviour: str, status: int, code: int
) -> None:
    fake_twilio.fail_next(behaviour)
    async with twilio_client(fake_twilio) as client:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="hi")
        assert fake_twilio.sent == []
        await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="again")

    assert caught.value.status == status
    assert caught.value.code == code
    assert caught.value.method == "POST"
    assert [message["body"] for message in fake_twilio.sent] == ["again"]
    assert len(fake_twilio.attempts) == 2


@pytest.mark.parametrize(
    ("to", "from_", "body", "code"),
    [
        ("", SMS_NUMBER, "hi", 21604),
        (CONTACT, SMS_NUMBER, "", 21602),
        (CONTACT, SMS_NUMBER, "x" * 1601, 21617),
        ("12345", SMS_NUMBER, "hi", 21211),
        (f"whatsapp:{CONTACT}", SMS_NUMBER, "hi", 21910),
    ],
)
async def test_twilio_validates_like_twilio(
    fake_twilio: FakeTwilio, to: str, from_: str, body: str, code: int
) -> None:
    async with twilio_client(fake_twilio) as client:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=to, from_=from_, body=body)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert fake_twilio.sent == []


def test_segment_counting() -> None:
    assert count_segments("a" * 160) == 1
    assert count_segments("a" * 161) == 2
    assert count_segments("ñ" * 160) == 1  # GSM-7
    assert count_segments("{" * 80) == 1  # extension characters count twice
    assert count_segments("{" * 81) == 2
    assert count_segments("á" * 70) == 1  # UCS-2
    assert count_segments("á" * 71) == 2
    assert count_segments("á" * 500, whatsapp=True) == 1


async def test_twilio_client_timeout_leaves_the_message_sent(fake_twilio: FakeTwilio) -> None:
    fake_twilio.hang_seconds = 5
    fake_twilio.fail_next("timeout")
    async with twilio_client(fake_twilio) as client:
        started = time.monotonic()
        # AsyncTwilioHttpClient(timeout=...) does not bound the request (see tests/fakes.py):
        # the caller must, and gets the builtin TimeoutError, not a TwilioException.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="hi")
        assert time.monotonic() - started < 3

        # Ambiguous on purpose: Twilio accepted the message.
        [sent] = fake_twilio.sent
        assert sent["body"] == "hi"
        found = await client.messages.list_async(to=CONTACT, from_=SMS_NUMBER)
        assert [message.sid for message in found] == [sent["sid"]]


async def test_twilio_http_client_timeout_argument_is_ignored() -> None:
    """Documents a twilio-python pitfall the service must work around."""
    with FakeTwilio(hang_seconds=1.0) as fake:
        fake.fail_next("timeout")
        async with twilio_client(fake, timeout=0.2) as client:
            started = time.monotonic()
            message = await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="hi")
        assert time.monotonic() - started >= 0.9
        assert message.status == "queued"


async def test_twilio_drop_records_nothing_and_answers_503() -> None:
    with FakeTwilio(hang_seconds=0.2) as fake:
        fake.fail_next("drop")
        async with twilio_client(fake) as client:
            with pytest.raises(TwilioRestException) as caught:
                await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="hi")
        assert (caught.value.status, caught.value.code) == (503, 20503)
        assert fake.sent == []
        assert len(fake.attempts) == 1


async def test_twilio_list_filters_newest_first_and_pages(fake_twilio: FakeTwilio) -> None:
    other = "+34600999888"
    before = datetime.now(UTC) - timedelta(minutes=1)
    async with twilio_client(fake_twilio) as client:
        first = await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="1")
        await client.messages.create_async(to=other, from_=SMS_NUMBER, body="other")
        second = await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="2")
        await client.messages.create_async(
            to=f"whatsapp:{CONTACT}", from_=f"whatsapp:{WHATSAPP_NUMBER}", body="wa"
        )

        mine = await client.messages.list_async(
            to=CONTACT, from_=SMS_NUMBER, date_sent_after=before
        )
        assert [message.sid for message in mine] == [second.sid, first.sid]
        assert [message.body for message in mine] == ["2", "1"]

        paged = await client.messages.list_async(to=CONTACT, page_size=1)
        assert [message.sid for message in paged] == [second.sid, first.sid]

        everything = await client.messages.list_async()
        assert len(everything) == 4
        assert everything[0].to == f"whatsapp:{CONTACT}"

        later = await client.messages.list_async(
            to=CONTACT, date_sent_after=datetime.now(UTC) + timedelta(minutes=1)
        )
        assert later == []
        earlier = await client.messages.list_async(to=CONTACT, date_sent_before=before)
        assert earlier == []
        today = await client.messages.list_async(to=CONTACT, date_sent=datetime.now(UTC).date())
        assert len(today) == 2

        fetched = await client.messages(first.sid).fetch_async()
        assert fetched.sid == first.sid
        assert fetched.body == "1"
        with pytest.raises(TwilioRestException) as missing:
            await client.messages("SM" + "0" * 32).fetch_async()
        assert (missing.value.status, missing.value.code) == (404, 20404)


class CallbackReceiver:
    """A tiny app that records the status callbacks posted to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: list[dict[str, Any]] = []
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        app = Starlette(routes=[Route("/{path:path}", self._record, methods=["POST"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    async def _record(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        with self._lock:
            self._posts.append({"form": form, "headers": dict(request.headers)})
        return Response(status_code=204)

    @property
    def posts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._posts)

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._socket.close()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as started:
        yield started


async def test_twilio_posts_signed_status_callbacks(receiver: CallbackReceiver) -> None:
    callback_url = receiver.url + "/webhooks/twilio/status?channel=sms"
    with FakeTwilio(callbacks=True, callback_delay=0.01) as fake:
        async with twilio_client(fake) as client:
            message = await client.messages.create_async(
                to=CONTACT, from_=SMS_NUMBER, body="hi", status_callback=callback_url
            )
            await eventually(lambda: len(receiver.posts) == 2, "both callbacks")
            fetched = await client.messages(message.sid).fetch_async()

        statuses = [post["form"]["MessageStatus"] for post in receiver.posts]
        assert statuses == ["sent", "delivered"]
        validator = RequestValidator(AUTH_TOKEN)
        for post in receiver.posts:
            form = post["form"]
            assert form["MessageSid"] == form["SmsSid"] == message.sid
            assert form["SmsStatus"] == form["MessageStatus"]
            assert form["AccountSid"] == ACCOUNT_SID
            assert (form["From"], form["To"]) == (SMS_NUMBER, CONTACT)
            assert form["ApiVersion"] == "2010-04-01"
            assert "ErrorCode" not in form
            assert post["headers"]["content-type"] == "application/x-www-form-urlencoded"
            assert validator.validate(callback_url, form, post["headers"]["x-twilio-signature"])
            assert not RequestValidator("0" * 32).validate(
                callback_url, form, post["headers"]["x-twilio-signature"]
            )
        assert fetched.status == "delivered"
        assert fetched.date_sent is not None
        await eventually(lambda: len(fake.callback_log) == 2, "both callbacks logged")
        assert [entry["response_status"] for entry in fake.callback_log] == [204, 204]


async def test_twilio_scripted_async_failure(receiver: CallbackReceiver) -> None:
    callback_url = receiver.url + "/status"
    with FakeTwilio(callbacks=True, callback_delay=0.01) as fake:
        fake.fail_next("failed:63016")
        async with twilio_client(fake) as client:
            message = await client.messages.create_async(
                to=f"whatsapp:{CONTACT}",
                from_=f"whatsapp:{WHATSAPP_NUMBER}",
                body="late",
                status_callback=callback_url,
            )
            assert message.status == "queued"
            await eventually(lambda: len(receiver.posts) == 1, "the failure's callback")
            fetched = await client.messages(message.sid).fetch_async()

    [post] = receiver.posts
    assert post["form"]["MessageStatus"] == "failed"
    assert post["form"]["ErrorCode"] == "63016"
    assert post["form"]["ChannelPrefix"] == "whatsapp"
    assert (fetched.status, fetched.error_code) == ("failed", 63016)


async def test_twilio_callback_failures_never_break_the_fake() -> None:
    with FakeTwilio(callbacks=True, callback_delay=0.01) as fake:
        async with twilio_client(fake) as client:
            await client.messages.create_async(
                to=CONTACT, from_=SMS_NUMBER, body="hi", status_callback="http://127.0.0.1:9/x"
            )
            await eventually(lambda: len(fake.callback_log) == 2, "both failed callbacks logged")
            assert all("error" in entry for entry in fake.callback_log)
            await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="still fine")
        assert len(fake.sent) == 2


async def test_no_callbacks_unless_enabled(
    fake_twilio: FakeTwilio, receiver: CallbackReceiver
) -> None:
    async with twilio_client(fake_twilio) as client:
        message = await client.messages.create_async(
            to=CONTACT, from_=SMS_NUMBER, body="hi", status_callback=receiver.url + "/status"
        )
        await eventually(
            lambda: fake_twilio.message(message.sid)["status"] == "delivered", "the delivery"
        )
    assert receiver.posts == []
    assert fake_twilio.callback_log == []


# --------------------------------------------------------------------------------------------------
# As separate processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_process(*args: str) -> Iterator[str]:
    port = _free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", *args, "--port", str(port)],
        cwd=ROOT,
        env=environment,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/_fake/state", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                assert process.poll() is None, "the fake process exited"
                assert time.monotonic() < deadline, "the fake process did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_fakes_run_as_processes_and_are_scriptable_over_http() -> None:
    async with httpx.AsyncClient() as http:
        with fake_process("openai", "--latency", "0.05") as openai_url:
            control = {"fail_next": ["500"]}
            response = await http.post(openai_url + "/_fake/control", json=control)
            assert response.status_code == 200
            assert response.json()["pending_failures"] == ["500"]
            async with AsyncOpenAI(
                api_key="t", base_url=openai_url + "/v1", max_retries=0
            ) as client:
                with pytest.raises(openai.InternalServerError):
                    await client.chat.completions.create(model="m", messages=MESSAGES)
                completion = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert completion.choices[0].message.content == "Echo: ¿Abrís el domingo?"
            state = (await http.get(openai_url + "/_fake/state")).json()
            assert len(state["requests"]) == 2

        with fake_process("twilio", "--latency", "0.01") as twilio_url:
            async with AsyncTwilioHttpClient() as http_client:
                twilio = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)
                twilio.api.base_url = twilio_url
                message = await twilio.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="x")
            [sent] = (await http.get(twilio_url + "/_fake/state")).json()["sent"]
            assert sent["sid"] == message.sid


async def test_the_twilio_process_serves_media_registered_over_http() -> None:
    note = ogg_opus(1.0)
    with fake_process("twilio", "--media-latency", "0.01") as twilio_url:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                twilio_url + "/_fake/media",
                params={"count": "2"},
                content=note,
                headers={"Content-Type": "audio/ogg"},
            )
            assert response.status_code == 200, response.text
            urls = response.json()["urls"]
            assert len(set(urls)) == 2
            refused = await http.post(twilio_url + "/_fake/media", params={"count": "0"})
            assert refused.status_code == 400

            # Fetched as Plática fetches it: Basic auth at Twilio, then its storage host.
            settings = make_settings(
                "sqlite+aiosqlite:///unused.db", TWILIO_API_BASE_URL=twilio_url
            )
            media = TwilioMedia(settings)
            try:
                fetched = await media.fetch(urls[1])
            finally:
                await media.aclose()
            assert (fetched.content, fetched.content_type) == (note, "audio/ogg")
            state = (await http.get(twilio_url + "/_fake/state")).json()
            assert [(r["method"], r["status"]) for r in state["media_requests"]] == [("GET", 307)]


# --------------------------------------------------------------------------------------------------
# Twilio's Content API (templates) and messages created with a ContentSid

PEDIDO = "Hola {{1}}, su pedido {{2}} está listo para recoger."


def content_client(client: Client, fake: FakeTwilio) -> Any:
    client.content.base_url = fake.url
    return client.content.v1


async def test_twilio_content_lists_page_by_page(fake_twilio: FakeTwilio) -> None:
    sids = [fake_twilio.add_content(f"pedido_{n}", PEDIDO) for n in range(5)]
    async with twilio_client(fake_twilio) as client:
        v1 = content_client(client, fake_twilio)
        contents = await v1.contents.list_async(page_size=2)
        approvals = await v1.content_and_approvals.list_async(page_size=2)
        first = await v1.content_and_approvals.page_async(page_size=2)

    assert [content.sid for content in contents] == sids
    assert [content.sid for content in approvals] == sids
    assert contents[0].friendly_name == "pedido_0"
    assert contents[0].types == {"twilio/text": {"body": PEDIDO}}
    assert contents[0].variables == {"1": "muestra 1", "2": "muestra 2"}
    assert contents[0].url == f"{fake_twilio.url}/v1/Content/{sids[0]}"
    assert approvals[0].approval_requests["status"] == "approved"
    assert approvals[0].approval_requests["name"] == "pedido_0"
    assert first.next_page_url.startswith(fake_twilio.url + "/v1/ContentAndApprovals?")
    assert f"PageToken=PT{sids[1]}" in first.next_page_url
    # Three pages each: 2 + 2 + 1.
    assert fake_twilio.request_log.count(("GET", "/v1/Content")) == 3


async def test_twilio_content_approval_as_registered(fake_twilio: FakeTwilio) -> None:
    fake_twilio.add_content("nunca", "Hola", approval=None)
    fake_twilio.add_content("no", "Hola", approval="rejected", rejection_reason="Spam")
    async with twilio_client(fake_twilio) as client:
        approvals = await content_client(client, fake_twilio).content_and_approvals.list_async()

    assert approvals[0].approval_requests == {}
    assert approvals[1].approval_requests["status"] == "rejected"
    assert approvals[1].approval_requests["rejection_reason"] == "Spam"


async def test_twilio_content_needs_the_credentials(fake_twilio: FakeTwilio) -> None:
    fake_twilio.add_content("pedido", PEDIDO)
    async with twilio_client(fake_twilio, auth_token="f" * 32) as client:
        # A list's pages raise a bare TwilioException with the response, not TwilioRestException.
        with pytest.raises(TwilioException) as caught:
            await content_client(client, fake_twilio).content_and_approvals.list_async()

    response = caught.value.args[1]
    assert response.status_code == 401
    assert json.loads(response.text)["code"] == 20003


async def test_twilio_content_scripted_failure(fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next("content:503", "500")
    async with twilio_client(fake_twilio) as client:
        with pytest.raises(TwilioException) as caught:
            await content_client(client, fake_twilio).contents.list_async()
        # The message creation's behaviour was left for it.
        with pytest.raises(TwilioRestException) as create:
            await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, body="x")

    assert caught.value.args[1].status_code == 503
    assert create.value.status == 500


async def test_twilio_content_removed(fake_twilio: FakeTwilio) -> None:
    kept = fake_twilio.add_content("pedido", PEDIDO)
    gone = fake_twilio.add_content("cita", "Su cita es el {{1}}.")
    fake_twilio.remove_content(gone)
    async with twilio_client(fake_twilio) as client:
        contents = await content_client(client, fake_twilio).contents.list_async()

    assert [content.sid for content in contents] == [kept]


async def test_twilio_sends_a_content_filled_in(fake_twilio: FakeTwilio) -> None:
    sid = fake_twilio.add_content("pedido", PEDIDO)
    variables = '{"1": "Ana", "2": "A-1043"}'
    async with twilio_client(fake_twilio) as client:
        message = await client.messages.create_async(
            to="whatsapp:" + CONTACT,
            from_="whatsapp:" + WHATSAPP_NUMBER,
            content_sid=sid,
            content_variables=variables,
        )

    assert message.body == "Hola Ana, su pedido A-1043 está listo para recoger."
    [sent] = fake_twilio.sent
    assert sent["body"] == message.body
    assert sent["content_sid"] == sid
    assert sent["content_variables"] == {"1": "Ana", "2": "A-1043"}


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"content_sid": "HX" + "0" * 32}, 21655),
        ({"body": "Hola", "content_variables": '{"1": "Ana"}'}, 21654),
        ({"content_sid": "{sid}", "content_variables": '{"1": "Ana"}'}, 21656),
        ({"content_sid": "{sid}"}, 21656),
        ({"content_sid": "{sid}", "content_variables": "no es JSON"}, 21656),
    ],
)
async def test_twilio_refuses_contents_like_twilio(
    fake_twilio: FakeTwilio, options: dict[str, str], code: int
) -> None:
    sid = fake_twilio.add_content("pedido", PEDIDO)
    given = {name: value.replace("{sid}", sid) for name, value in options.items()}
    async with twilio_client(fake_twilio) as client:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=CONTACT, from_=SMS_NUMBER, **given)

    assert caught.value.status == 400
    assert caught.value.code == code
    assert fake_twilio.sent == []


async def test_the_twilio_process_registers_content_over_http() -> None:
    with fake_process("twilio") as twilio_url:
        async with httpx.AsyncClient() as http:
            added = await http.post(
                twilio_url + "/_fake/content",
                json={"name": "pedido", "body": PEDIDO, "approval": "pending"},
            )
            assert added.status_code == 200, added.text
            sid = added.json()["sid"]
            refused = await http.post(twilio_url + "/_fake/content", json={"name": "sin texto"})
            assert refused.status_code == 400
            state = (await http.get(twilio_url + "/_fake/state")).json()
            assert [c["sid"] for c in state["contents"]] == [sid]
            assert state["contents"][0]["approval_requests"]["status"] == "pending"
            removed = await http.delete(f"{twilio_url}/_fake/content/{sid}")
            assert removed.status_code == 204
            state = (await http.get(twilio_url + "/_fake/state")).json()
            assert state["contents"] == []
