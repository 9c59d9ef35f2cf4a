"""Twilio's copy of an inbound media item: fetched with Plática's credentials kept on Twilio's
own media URLs (never sent on to where Twilio redirects), and deleted once read.

Twilio answers a media URL with a 307 to a pre-signed storage URL (``media.twiliocdn.com``,
valid for a few hours). That host needs no credentials and must never see them: it is not
Twilio's API, and S3-style hosts refuse a request that carries two kinds of auth. A webhook's
``MediaUrl`` can say anything (a forged one, or a changed account), so the credentials go only
to ``{TWILIO_API_BASE_URL}/2010-04-01/Accounts/{our account}/Messages/{MM…}/Media/{ME…}``:
anything else is refused before any request is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

import aiohttp
import httpx
from pydantic import SecretStr
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from platica.config import Settings
from platica.logging import get_logger
from platica.ratelimit import backoff

log = get_logger(__name__)

# One attempt, every redirect and the whole body included: per-read timeouts alone would let a
# host that trickles a byte at a time hold the reply task for ever.
FETCH_TIMEOUT_SECONDS = 30.0
READ_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
FETCH_ATTEMPTS = 3
FETCH_RETRY_BASE_SECONDS = 0.5
FETCH_RETRY_MAX_SECONDS = 4.0
MAX_REDIRECTS = 3
# The SDK's own timeout never reaches aiohttp (see channels/sender.py), so deletions are bounded
# here.
DELETE_TIMEOUT_SECONDS = 10.0
# What a body is when neither its host nor the webhook said (RFC 9110, 8.3).
UNKNOWN_TYPE = "application/octet-stream"

API_VERSION = "2010-04-01"
# Every character a Twilio media URL is made of. Nothing else gets through: no userinfo (@), no
# query (?), no fragment (#), no percent-encoding, no backslash or space that two URL parsers
# could read differently.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9:/._-]+")
# Twilio calls a message's SID MM… (media) or SM… (text) and may use either in a media URL.
_MEDIA_PATH = r"(?P<message>(?:MM|SM)[0-9a-fA-F]{32})/Media/(?P<media>ME[0-9a-fA-F]{32})"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class MediaFetchFailed(Exception):
    """A media item could not be fetched or deleted. `message` is for operators (it never holds
    a secret); `retryable` when trying again later may work (timeouts, 429, 5xx)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Fetched:
    content: bytes
    content_type: str
    sha256: str  # hex


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in; None for what is not http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]


def _size(count: int) -> str:
    for unit, name in ((1024 * 1024, "MiB"), (1024, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"


def _refusing_jar() -> CookieJar:
    """A cookie jar that keeps nothing: a cookie set by one host must not reach another."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class TwilioMedia:
    """Fetches and deletes the media of Plática's own Twilio account."""

    def __init__(self, settings: Settings) -> None:
        if settings.TWILIO_ACCOUNT_SID is None or settings.TWILIO_AUTH_TOKEN is None:
            raise ValueError("TwilioMedia needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        self._account_sid = settings.TWILIO_ACCOUNT_SID
        self._auth_token: SecretStr = settings.TWILIO_AUTH_TOKEN
        self._max_bytes = settings.MEDIA_MAX_BYTES
        base = settings.TWILIO_API_BASE_URL
        origin = _origin(base)
        if origin is None:
            raise ValueError("TWILIO_API_BASE_URL must be an http(s) URL")
        self._origin = origin
        prefix = f"{urlsplit(base).path.rstrip('/')}/{API_VERSION}/Accounts/{self._account_sid}"
        self._media_path = re.compile(re.escape(prefix + "/Messages/") + _MEDIA_PATH)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            # Redirects are followed by _attempt, which decides what each hop is sent.
            follow_redirects=False,
            # No proxy or .netrc from the environment: a .netrc entry would add credentials
            # to the storage host.
            trust_env=False,
            cookies=_refusing_jar(),
            # Media is compressed already; a body is counted against the cap as it arrives.
            headers={"Accept-Encoding": "identity"},
        )
        # Deletions go through the SDK, like sending; retries are the caller's.
        self._twilio_http = AsyncTwilioHttpClient()
        self._twilio = Client(
            self._account_sid, self._auth_token.get_secret_value(), http_client=self._twilio_http
        )
        self._twilio.api.base_url = base

    def _sids(self, url: str) -> tuple[str, str] | None:
        """(message SID, media SID) of one of this account's media URLs; None for any other."""
        if not _URL_CHARACTERS.fullmatch(url) or _origin(url) != self._origin:
            return None
        match = self._media_path.fullmatch(urlsplit(url).path)
        return None if match is None else (match["message"], match["media"])

    def allowed(self, url: str) -> bool:
        """Whether Plática's credentials may be sent to `url`: only to a media item of its own
        account on TWILIO_API_BASE_URL, written the way Twilio writes it."""
        return self._sids(url) is not None

    async def fetch(self, url: str, content_type_hint: str = "") -> Fetched:
        """The media item at `url`, retrying what is transient. `content_type_hint` (the
        webhook's MediaContentType) is used when the host sends no Content-Type."""
        sids = self._sids(url)
        if sids is None:
            log.warning("media.fetch_refused")
            raise MediaFetchFailed(
                "not a media URL of this Twilio account: refused, nothing was requested",
                retryable=False,
            )
        media_sid = sids[1]
        attempt = 1
        while True:
            try:
                async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
                    fetched = await self._attempt(url, content_type_hint)
            except TimeoutError:
                failure = MediaFetchFailed(
                    f"Twilio's media took longer than {FETCH_TIMEOUT_SECONDS:g} s", retryable=True
                )
            except MediaFetchFailed as error:
                failure = error
            else:
                log.info("media.fetched", media_sid=media_sid, attempts=attempt)
                return fetched
            if not failure.retryable or attempt >= FETCH_ATTEMPTS:
                log.info(
                    "media.fetch_failed",
                    media_sid=media_sid,
                    reason=failure.message,
                    retryable=failure.retryable,
                    attempts=attempt,
                )
                raise failure
            log.info("media.fetch_retrying", media_sid=media_sid, reason=failure.message)
            await asyncio.sleep(backoff(attempt, FETCH_RETRY_BASE_SECONDS, FETCH_RETRY_MAX_SECONDS))
            attempt += 1

    async def _attempt(self, url: str, content_type_hint: str) -> Fetched:
        """One GET of `url` with the credentials, then of each redirect target without them."""
        target = url
        auth: httpx.BasicAuth | None = httpx.BasicAuth(
            self._account_sid, self._auth_token.get_secret_value()
        )
        for hop in range(MAX_REDIRECTS + 1):
            where = "Twilio" if hop == 0 else "Twilio's media host"
            try:
                # auth=None is no auth at all: the client has none of its own.
                response = await self._http.send(
                    self._http.build_request("GET", target), auth=auth, stream=True
                )
                try:
                    if response.status_code in _REDIRECTS:
                        target = self._redirect_target(response)
                        # The credentials are Twilio's API's alone: never for where it sends us.
                        auth = None
                        continue
                    self._check_status(response.status_code, where, hop)
                    return await self._read(response, content_type_hint)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as error:
                raise MediaFetchFailed(f"{where} timed out", retryable=True) from error
            except httpx.TransportError as error:
                raise MediaFetchFailed(
                    f"{where} could not be reached ({type(error).__name__})", retryable=True
                ) from error
            except httpx.HTTPError as error:  # a body that cannot be decoded
                raise MediaFetchFailed(
                    f"{where} answered with what could not be read ({type(error).__name__})",
                    retryable=False,
                ) from error
        raise MediaFetchFailed(
            f"Twilio redirected more than {MAX_REDIRECTS} times", retryable=False
        )

    def _redirect_target(self, response: httpx.Response) -> str:
        location = response.headers.get("location")
        if not location:
            raise MediaFetchFailed(
                f"Twilio redirected ({response.status_code}) to nowhere", retryable=False
            )
        try:
            target = response.url.join(location)
        except httpx.InvalidURL as error:
            raise MediaFetchFailed(
                "Twilio redirected to a URL that is not one", retryable=False
            ) from error
        # Twilio's storage URL is itself a secret for a few hours: not over plain http when
        # Twilio was reached over https.
        if target.scheme not in ("https", self._origin[0]) or target.userinfo:
            raise MediaFetchFailed(
                "Twilio redirected to a URL Plática does not follow", retryable=False
            )
        return str(target)

    @staticmethod
    def _check_status(status: int, where: str, hop: int) -> None:
        if status == 200:
            return
        if status in (401, 403):
            message = (
                f"Twilio refused Plática's credentials ({status})"
                if hop == 0
                else f"{where} refused the signed URL ({status})"
            )
            raise MediaFetchFailed(message, retryable=False)
        if status in (404, 410):
            raise MediaFetchFailed(f"{where} answered {status}: the media is gone", retryable=False)
        raise MediaFetchFailed(
            f"{where} answered {status}", retryable=status in (408, 429) or status >= 500
        )

    async def _read(self, response: httpx.Response, content_type_hint: str) -> Fetched:
        """The body, stopped as soon as it is known to be too large (a voice note has no
        business being bigger; a hostile or broken host must not fill the memory)."""
        too_large = MediaFetchFailed(
            f"larger than MEDIA_MAX_BYTES ({_size(self._max_bytes)})", retryable=False
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large
        body = bytearray()
        digest = hashlib.sha256()
        async for chunk in response.aiter_bytes():
            if len(body) + len(chunk) > self._max_bytes:
                raise too_large
            body += chunk
            digest.update(chunk)
        content_type = response.headers.get("content-type", "").strip()
        return Fetched(
            content=bytes(body),
            content_type=content_type or content_type_hint or UNKNOWN_TYPE,
            sha256=digest.hexdigest(),
        )

    async def delete(self, url: str) -> None:
        """Delete Twilio's copy of the media item at `url` (Twilio keeps media until then). A
        copy already gone counts as deleted."""
        sids = self._sids(url)
        if sids is None:
            raise MediaFetchFailed(
                "not a media URL of this Twilio account: not deleted", retryable=False
            )
        message_sid, media_sid = sids
        try:
            async with asyncio.timeout(DELETE_TIMEOUT_SECONDS):
                await self._twilio.messages(message_sid).media(media_sid).delete_async()
        except TwilioRestException as error:
            if error.status == 404:
                log.info("media.deleted", media_sid=media_sid, already_gone=True)
                return
            if error.status in (401, 403):
                message = f"Twilio refused Plática's credentials ({error.status})"
            else:
                message = f"Twilio answered {error.status} to the deletion"
            raise MediaFetchFailed(
                message, retryable=error.status == 429 or error.status >= 500
            ) from error
        except (aiohttp.ClientError, TimeoutError, TwilioException) as error:
            raise MediaFetchFailed(
                f"Twilio could not be reached to delete the media ({type(error).__name__})",
                retryable=True,
            ) from error
        log.info("media.deleted", media_sid=media_sid)

    async def aclose(self) -> None:
        try:
            await self._http.aclose()
        finally:
            await self._twilio_http.close()
