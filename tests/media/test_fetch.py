"""Twilio's media fetched and deleted over real HTTP: FakeTwilio checks Basic auth and redirects,
like Twilio, to FakeMediaStorage, the pre-signed storage host that must never see the
credentials."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from platica.config import Settings
from platica.logging import configure_logging
from platica.media import fetch
from platica.media.fetch import Fetched, MediaFetchFailed, TwilioMedia
from tests.conftest import make_settings
from tests.factories import ACCOUNT_SID, AUTH_TOKEN
from tests.fakes import FakeTwilio
from tests.logs import log_events
from tests.polling import eventually

VOICE_NOTE = b"OggS\x00\x02" + bytes(range(256)) * 40  # an Ogg page header, then "audio"
MENU = "Menú del día: lentejas, merluza y flan. ¡Abrimos el domingo!".encode()
OTHER_ACCOUNT = "AC" + "b2" * 16
SID_HEX = "0123456789abcdef" * 2


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def settings_for(tmp_path: Path, fake: FakeTwilio) -> Callable[..., Settings]:
    """Settings pointing at the fake (nothing here opens the database)."""

    def settings(**overrides: object) -> Settings:
        values: dict[str, object] = {"TWILIO_API_BASE_URL": fake.url, **overrides}
        return make_settings(f"sqlite+aiosqlite:///{tmp_path}/platica.db", **values)

    return settings


@pytest.fixture
async def media(settings_for: Callable[..., Settings]) -> AsyncIterator[TwilioMedia]:
    twilio_media = TwilioMedia(settings_for())
    try:
        yield twilio_media
    finally:
        await twilio_media.aclose()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries still go through ratelimit.backoff, from a base too small to slow the test."""
    monkeypatch.setattr(fetch, "FETCH_RETRY_BASE_SECONDS", 0.01)
    monkeypatch.setattr(fetch, "FETCH_RETRY_MAX_SECONDS", 0.02)


@pytest.fixture
def info_logging(settings_for: Callable[..., Settings]) -> Iterator[None]:
    """Plática's logging at INFO for the test, back to the tests' WARNING afterwards."""
    configure_logging(settings_for(LOG_LEVEL="INFO"))
    yield
    configure_logging(settings_for())


async def fetch_with(settings: Settings, url: str) -> Fetched:
    twilio_media = TwilioMedia(settings)
    try:
        return await twilio_media.fetch(url)
    finally:
        await twilio_media.aclose()


async def failure_of(media: TwilioMedia, url: str) -> MediaFetchFailed:
    with pytest.raises(MediaFetchFailed) as caught:
        await media.fetch(url)
    return caught.value


def sids(url: str) -> tuple[str, str]:
    """(message SID, media SID) of a media URL."""
    parts = urlsplit(url).path.split("/")
    return parts[-3], parts[-1]


def storage_finished(fake: FakeTwilio) -> Callable[[], bool]:
    return lambda: all(request["finished"] for request in fake.media_storage.requests)


API = "https://api.twilio.com"
OWN = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{SID_HEX}/Media/ME{SID_HEX}"


class TestAllowed:
    @pytest.fixture
    async def twilio(self, tmp_path: Path) -> AsyncIterator[TwilioMedia]:
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path}/platica.db", TWILIO_API_BASE_URL=API
        )
        media = TwilioMedia(settings)
        try:
            yield media
        finally:
            await media.aclose()

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(API + OWN, id="media"),
            # Twilio names a message SM… or MM…; either may own the media.
            pytest.param(API + OWN.replace("/MM", "/SM"), id="sms-sid"),
            pytest.param("https://api.twilio.com:443" + OWN, id="default-port"),
        ],
    )
    def test_own_media_urls_are_allowed(self, twilio, url):
        assert twilio.allowed(url)

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param("http://api.twilio.com" + OWN, id="http"),
            pytest.param("https://api.twilio.com:8443" + OWN, id="port"),
            pytest.param("https://media.twiliocdn.com" + OWN, id="host"),
            pytest.param("https://api.twilio.com.evil.example" + OWN, id="suffix"),
            pytest.param("https://api.twilio.com@evil.example" + OWN, id="userinfo"),
            pytest.param("https://evil.example\\@api.twilio.com" + OWN, id="backslash"),
            pytest.param(API + OWN.replace(ACCOUNT_SID, OTHER_ACCOUNT), id="account"),
            pytest.param(API + OWN + ".json", id="metadata"),
            pytest.param(API + OWN.rsplit("/", 1)[0], id="list"),
            pytest.param(API + OWN + "/", id="slash"),
            pytest.param(API + OWN + "?a=1", id="query"),
            pytest.param(API + OWN + "#a", id="fragment"),
            pytest.param(API + OWN.replace("/Media/", "/Media/../Media/"), id="dots"),
            pytest.param(API + OWN.replace("/Media/", "%2FMedia%2F"), id="percent"),
            pytest.param(API + OWN[:-1], id="short-sid"),
            pytest.param(API + OWN.replace("/Media/ME", "/Media/MM"), id="not-a-media-sid"),
            pytest.param(API + OWN.replace("Messages/MM", "Calls/CA"), id="calls"),
            pytest.param(" " + API + OWN, id="space"),
            pytest.param(API + OWN + "\n", id="newline"),
            pytest.param("", id="empty"),
        ],
    )
    def test_anything_else_is_refused(self, twilio, url):
        assert not twilio.allowed(url)

    def test_credentials_are_required(self, tmp_path):
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path}/platica.db",
            TWILIO_ACCOUNT_SID=None,
            TWILIO_AUTH_TOKEN=None,
        )
        with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
            TwilioMedia(settings)


class TestFetch:
    async def test_the_redirect_is_followed_to_the_bytes(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")

        fetched = await media.fetch(url, content_type_hint="audio/mpeg")

        assert fetched.content == VOICE_NOTE
        assert fetched.sha256 == hashlib.sha256(VOICE_NOTE).hexdigest()
        assert fetched.content_type == "audio/ogg"  # the host's, not the hint
        [asked] = fake.media_requests
        assert (asked["method"], asked["authorised"], asked["status"]) == ("GET", True, 307)
        [served] = fake.media_storage.requests
        assert (served["status"], served["completed"]) == (200, True)

    async def test_the_storage_host_never_gets_the_credentials(self, fake, media):
        url = fake.add_media(MENU, "text/plain; charset=utf-8")

        await media.fetch(url)
        await media.fetch(url)

        assert [asked["authorised"] for asked in fake.media_requests] == [True, True]
        served = fake.media_storage.requests
        assert len(served) == 2
        for request in served:
            assert "authorization" not in request["headers"]
            assert "cookie" not in request["headers"]
            assert AUTH_TOKEN not in str(request)

    async def test_the_hint_is_the_type_when_the_host_gives_none(self, fake, media):
        url = fake.add_media(MENU, "")

        fetched = await media.fetch(url, content_type_hint="text/plain")

        assert fetched.content == MENU
        assert fetched.content_type == "text/plain"

    async def test_a_404_is_not_retried(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.fail_next("media:404")

        failure = await failure_of(media, url)

        assert failure.retryable is False
        assert failure.message == "Twilio answered 404: the media is gone"
        assert len(fake.media_requests) == 1
        assert fake.media_storage.requests == []

    async def test_media_twilio_does_not_know_is_gone(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        message_sid, _ = sids(url)

        failure = await failure_of(media, url.rsplit("/", 1)[0] + "/ME" + SID_HEX)

        assert (failure.retryable, failure.message) == (
            False,
            "Twilio answered 404: the media is gone",
        )
        assert message_sid in fake.media_requests[0]["path"]

    async def test_refused_credentials_are_not_retried(self, fake, settings_for):
        wrong = settings_for(TWILIO_AUTH_TOKEN="fedcba9876543210fedcba9876543210")
        url = fake.add_media(VOICE_NOTE, "audio/ogg")

        with pytest.raises(MediaFetchFailed) as caught:
            await fetch_with(wrong, url)

        assert caught.value.retryable is False
        assert caught.value.message.startswith("Twilio refused Plática's credentials")
        assert "fedcba" not in caught.value.message
        [asked] = fake.media_requests
        assert (asked["authorised"], asked["status"]) == (False, 401)

    async def test_a_twilio_500_is_retried(self, fake, media, fast_retries):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.fail_next("media:500")

        fetched = await media.fetch(url)

        assert fetched.content == VOICE_NOTE
        assert [asked["status"] for asked in fake.media_requests] == [500, 307]
        assert len(fake.media_storage.requests) == 1

    async def test_a_storage_500_is_retried_from_twilio(self, fake, media, fast_retries):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.media_storage.fail_next("500")

        fetched = await media.fetch(url)

        assert fetched.sha256 == hashlib.sha256(VOICE_NOTE).hexdigest()
        # Each attempt starts over at Twilio, for a freshly signed URL.
        assert [asked["status"] for asked in fake.media_requests] == [307, 307]
        first, second = fake.media_storage.requests
        assert (first["status"], second["status"]) == (500, 200)
        assert first["query"] != second["query"]

    async def test_twilio_rate_limits_are_retried_until_the_attempts_run_out(
        self, fake, media, fast_retries
    ):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.fail_always("media:429")

        failure = await failure_of(media, url)

        assert (failure.retryable, failure.message) == (True, "Twilio answered 429")
        assert len(fake.media_requests) == fetch.FETCH_ATTEMPTS

    async def test_a_hung_storage_host_times_out_on_every_attempt(
        self, fake, media, fast_retries, monkeypatch
    ):
        monkeypatch.setattr(fetch, "FETCH_TIMEOUT_SECONDS", 0.3)
        fake.media_storage.hang_seconds = 10
        fake.media_storage.fail_always("timeout")
        url = fake.add_media(VOICE_NOTE, "audio/ogg")

        failure = await failure_of(media, url)

        assert failure.retryable is True
        assert "0.3 s" in failure.message
        assert len(fake.media_requests) == fetch.FETCH_ATTEMPTS
        assert len(fake.media_storage.requests) == fetch.FETCH_ATTEMPTS

    async def test_a_trickling_body_is_cut_at_the_deadline(
        self, fake, media, fast_retries, monkeypatch
    ):
        """Every read is quick, so only the whole-fetch deadline stops it."""
        monkeypatch.setattr(fetch, "FETCH_TIMEOUT_SECONDS", 0.3)
        storage = fake.media_storage
        storage.chunk_size, storage.chunk_seconds = 16, 0.05
        url = fake.add_media(MENU * 4, "text/plain")

        failure = await failure_of(media, url)

        assert failure.retryable is True
        await eventually(storage_finished(fake), "the storage host to stop sending")
        served = storage.requests
        assert len(served) == fetch.FETCH_ATTEMPTS
        assert not any(request["completed"] for request in served)

    async def test_an_unreachable_twilio_is_retryable(self, fake, settings_for, fast_retries):
        # Nothing listens on the discard port.
        unreachable = settings_for(TWILIO_API_BASE_URL="http://127.0.0.1:9")

        with pytest.raises(MediaFetchFailed) as caught:
            await fetch_with(unreachable, "http://127.0.0.1:9" + OWN)

        assert caught.value.retryable is True
        assert caught.value.message == "Twilio could not be reached (ConnectError)"

    async def test_the_log_has_the_media_sid_and_the_outcome_only(
        self, fake, settings_for, info_logging
    ):
        settings = settings_for(LOG_LEVEL="INFO")
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.fail_next("media:404")

        with log_events() as logged:
            with pytest.raises(MediaFetchFailed):
                await fetch_with(settings, url)
            await fetch_with(settings, fake.add_media(MENU, "text/plain"))

        [failed] = logged.named("media.fetch_failed")
        assert failed["media_sid"] == sids(url)[1]
        assert failed["reason"] == "Twilio answered 404: the media is gone"
        assert len(logged.named("media.fetched")) == 1
        assert logged.events
        assert AUTH_TOKEN not in str(logged.events)
        assert "/Accounts/" not in str(logged.events)


class TestMediaMaxBytes:
    @pytest.fixture
    def capped(self, settings_for: Callable[..., Settings]) -> Settings:
        return settings_for(MEDIA_MAX_BYTES=1024)

    @pytest.fixture
    def big(self, fake: FakeTwilio) -> str:
        return fake.add_media(bytes(1024 * 1024), "application/pdf")

    async def test_too_large_by_content_length(self, fake, capped, big, monkeypatch):
        """Refused on the headers: the body, which the host holds back, is never waited for."""
        monkeypatch.setattr(fetch, "FETCH_TIMEOUT_SECONDS", 2.0)
        fake.media_storage.chunk_seconds = 10

        with pytest.raises(MediaFetchFailed) as caught:
            await fetch_with(capped, big)

        assert caught.value.retryable is False
        assert caught.value.message == "larger than MEDIA_MAX_BYTES (1 KiB)"
        await eventually(storage_finished(fake), "the storage host to stop")
        [served] = fake.media_storage.requests
        assert (served["bytes_sent"], served["completed"]) == (0, False)

    async def test_too_large_as_it_streams(self, fake, capped, big):
        # No Content-Length to refuse up front; slow enough that a client that stops reading
        # is seen to stop.
        fake.media_storage.fail_next("chunked")
        fake.media_storage.chunk_size, fake.media_storage.chunk_seconds = 16 * 1024, 0.02

        with pytest.raises(MediaFetchFailed) as caught:
            await fetch_with(capped, big)

        assert caught.value.retryable is False
        assert caught.value.message == "larger than MEDIA_MAX_BYTES (1 KiB)"
        await eventually(storage_finished(fake), "the storage host to stop sending")
        [served] = fake.media_storage.requests
        assert served["completed"] is False
        assert served["bytes_sent"] < 1024 * 1024

    async def test_exactly_the_cap_is_fetched(self, fake, capped):
        fake.media_storage.chunk_size = 100
        fake.media_storage.fail_next("chunked")
        url = fake.add_media((MENU * 20)[:1024], "text/plain")

        fetched = await fetch_with(capped, url)

        assert len(fetched.content) == 1024


class TestRefusedUrls:
    """A webhook's MediaUrl can say anything: the credentials go nowhere but to this account's
    media on TWILIO_API_BASE_URL, and nothing else is even requested."""

    @pytest.mark.parametrize(
        "forge",
        [
            pytest.param(lambda fake, url: url.replace("127.0.0.1", "localhost"), id="host"),
            pytest.param(
                lambda fake, url: fake.media_storage.base_url + urlsplit(url).path,
                id="port",
            ),
            pytest.param(lambda fake, url: url.replace(ACCOUNT_SID, OTHER_ACCOUNT), id="account"),
            pytest.param(
                lambda fake, url: f"{fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
                id="messages",
            ),
            pytest.param(lambda fake, url: url + ".json", id="metadata"),
            pytest.param(
                lambda fake, url: url.replace("http://", f"http://{ACCOUNT_SID}:{AUTH_TOKEN}@"),
                id="userinfo",
            ),
            pytest.param(lambda fake, url: url + "?PageSize=1", id="query"),
            pytest.param(lambda fake, url: url.replace("/Media/", "/Media/../Media/"), id="dots"),
            pytest.param(lambda fake, url: url.replace("/Media/ME", "/Media/%4D%45"), id="percent"),
        ],
    )
    async def test_refused_without_a_request(self, fake, media, forge):
        forged = forge(fake, fake.add_media(VOICE_NOTE, "audio/ogg"))

        with pytest.raises(MediaFetchFailed) as caught:
            await media.fetch(forged)

        assert caught.value.retryable is False
        assert "refused" in caught.value.message
        assert fake.request_log == []
        assert fake.media_storage.requests == []


class TestDelete:
    async def test_the_item_is_gone(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        await media.fetch(url)
        signed = fake.media_storage.requests[0]

        await media.delete(url)

        assert fake.media_deleted == [sids(url)[1]]
        deletion = fake.media_requests[-1]
        assert (deletion["method"], deletion["authorised"], deletion["status"]) == (
            "DELETE",
            True,
            204,
        )
        assert deletion["path"] == urlsplit(url).path + ".json"
        failure = await failure_of(media, url)
        assert failure.message == "Twilio answered 404: the media is gone"
        # The storage URL signed before the deletion is no good either.
        async with httpx.AsyncClient() as client:
            stale = f"{fake.media_storage.base_url}{signed['path']}?{signed['query']}"
            assert (await client.get(stale)).status_code == 403

    async def test_deleting_what_is_gone_is_done(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")

        await media.delete(url)
        await media.delete(url)

        assert fake.media_deleted == [sids(url)[1]]
        assert [asked["status"] for asked in fake.media_requests] == [204, 404]

    async def test_a_failed_deletion_is_retryable_and_keeps_the_item(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        fake.fail_next("media:500")

        with pytest.raises(MediaFetchFailed) as caught:
            await media.delete(url)

        assert caught.value.retryable is True
        assert caught.value.message == "Twilio answered 500 to the deletion"
        assert fake.media_deleted == []
        assert (await media.fetch(url)).content == VOICE_NOTE

    async def test_only_own_media_is_deleted(self, fake, media):
        url = fake.add_media(VOICE_NOTE, "audio/ogg").replace(ACCOUNT_SID, OTHER_ACCOUNT)

        with pytest.raises(MediaFetchFailed) as caught:
            await media.delete(url)

        assert caught.value.retryable is False
        assert fake.request_log == []


class TestFakeTwilioMedia:
    """The fake is as strict as Twilio and its storage host, or the tests above prove little."""

    async def test_media_needs_basic_auth(self, fake):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        async with httpx.AsyncClient() as client:
            anonymous = await client.get(url)
            allowed = await client.get(url, auth=(ACCOUNT_SID, AUTH_TOKEN))

        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == 20003
        assert allowed.status_code == 307
        assert allowed.headers["location"].startswith(fake.media_storage.base_url + "/media/ME")

    async def test_the_storage_host_refuses_two_auth_mechanisms(self, fake):
        url = fake.add_media(VOICE_NOTE, "audio/ogg")
        async with httpx.AsyncClient() as client:
            signed = (await client.get(url, auth=(ACCOUNT_SID, AUTH_TOKEN))).headers["location"]
            both = await client.get(signed, auth=(ACCOUNT_SID, AUTH_TOKEN))
            unsigned = await client.get(signed.split("?")[0])
            plain = await client.get(signed)

        assert both.status_code == 400
        assert "<Code>InvalidArgument</Code>" in both.text
        assert unsigned.status_code == 403
        assert (plain.status_code, plain.content) == (200, VOICE_NOTE)
        assert plain.headers["content-type"] == "audio/ogg"

    async def test_the_sdk_reads_the_metadata(self, fake):
        message_sid, media_sid = sids(fake.add_media(MENU, "text/plain"))
        async with AsyncTwilioHttpClient() as http_client:
            client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)
            client.api.base_url = fake.url
            resource = await client.messages(message_sid).media(media_sid).fetch_async()

        assert (resource.sid, resource.parent_sid) == (media_sid, message_sid)
        assert resource.content_type == "text/plain"

    async def test_creations_and_media_requests_take_their_own_behaviours(self, fake, media):
        """A scripted creation error is not spent by a media request, nor the other way."""
        fake.fail_next("500", "media:404", "21211")
        url = fake.add_media(VOICE_NOTE, "audio/ogg")

        failure = await failure_of(media, url)
        async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as client:
            created = await client.post(
                f"{fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
                data={"To": "+34600111222", "From": "+34600333444", "Body": "¿Abrís hoy?"},
            )

        assert failure.message == "Twilio answered 404: the media is gone"
        assert created.status_code == 500
        assert fake.pending_failures == ["21211"]
