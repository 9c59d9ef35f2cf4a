"""MessageSender: Twilio's REST API through the official SDK, or the dry run when Twilio is not set up."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import HttpClient
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from platica.config import Settings
from platica.errors import RetryableError
from platica.logging import get_logger
from platica.metrics import TWILIO_SECONDS
from platica.models import Channel, MessageStatus

log = get_logger(__name__)

TWILIO_TIMEOUT_SECONDS = 10.0
# Twilio's date_created is in whole seconds (the fraction dropped), and its clock is not ours:
# a message created just after an attempt began may show a date up to this much before it.
FIND_SKEW = timedelta(seconds=2)
# Twilio errors about the recipient or the content: sending again cannot succeed.
UNSUBSCRIBED = 21610


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    channel: Channel
    to: str  # E.164 (or WhatsApp id), no channel prefix
    from_: str
    body: str
    status_callback: str | None = None
    # An approved template: sent by its ContentSid with its variables (JSON), without Body
    # (`body` is its text filled in, which Twilio reports back).
    content_sid: str | None = None
    content_variables: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SentMessage:
    sid: str | None
    status: MessageStatus


class SendFailed(Exception):
    """Twilio refused the message for good (an unsubscribed or invalid recipient...)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class MessageSender(Protocol):
    async def send(self, message: OutgoingMessage) -> SentMessage:
        """Raises RetryableError for transient failures and SendFailed for permanent ones."""
        ...

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> list[SentMessage]:
        """The messages like `message` (same sender, recipient and text) created at or after
        `since`, oldest first: an interrupted attempt begun at `since` that did reach Twilio is
        among them. Some may be other messages of ours (the same text sent twice): the caller
        leaves out the SIDs it has stored already."""
        ...

    async def aclose(self) -> None: ...


def twilio_client(settings: Settings, http_client: HttpClient) -> Client:
    """The official SDK's client with Plática's credentials, its REST calls sent to
    TWILIO_API_BASE_URL and its Messaging API calls (the WhatsApp Senders) to
    TWILIO_MESSAGING_BASE_URL, through `http_client` (async for the service, the SDK's blocking
    one for the command line)."""
    assert settings.TWILIO_ACCOUNT_SID is not None
    assert settings.TWILIO_AUTH_TOKEN is not None
    client = Client(
        settings.TWILIO_ACCOUNT_SID,
        settings.TWILIO_AUTH_TOKEN.get_secret_value(),
        http_client=http_client,
    )
    client.api.base_url = settings.TWILIO_API_BASE_URL
    client.messaging.base_url = settings.TWILIO_MESSAGING_BASE_URL
    return client


def channel_address(channel: Channel, number: str) -> str:
    return f"whatsapp:{number}" if channel is Channel.whatsapp else number


def _content(message: OutgoingMessage) -> dict[str, Any]:
    """What the message says, as the Messages API takes it: a template by its ContentSid (its
    variables only when it has some: an empty set is refused), else the Body."""
    if message.content_sid is None:
        return {"body": message.body}
    content: dict[str, Any] = {"content_sid": message.content_sid}
    if message.content_variables:
        content["content_variables"] = json.dumps(message.content_variables, ensure_ascii=False)
    return content


def _alike(body: str | None, direction: str | None, message: OutgoingMessage) -> bool:
    """Whether a message Twilio lists may be `message`'s attempt: the same text; for a template,
    any message created through the API, whatever its text (Twilio shows its own rendering of
    the template, which need not be our copy of it: comparing them sent a broadcast's
    interrupted templates twice after a crash)."""
    if body == message.body:
        return True
    return message.content_sid is not None and direction == "outbound-api"


def _status(value: object) -> MessageStatus:
    try:
        return MessageStatus(str(value))
    except ValueError:
        return MessageStatus.queued


class TwilioSender:
    """Sends through Twilio's Messages API with the SDK's async (aiohttp) client."""

    def __init__(self, settings: Settings) -> None:
        assert settings.TWILIO_ACCOUNT_SID is not None
        assert settings.TWILIO_AUTH_TOKEN is not None
        # Retries are the job's (with backoff and a check for an earlier landed attempt).
        self._http = AsyncTwilioHttpClient()
        self._client = twilio_client(settings, self._http)

    async def send(self, message: OutgoingMessage) -> SentMessage:
        started = time.perf_counter()
        try:
            # The SDK's own timeout never reaches aiohttp, so bound the call here.
            async with asyncio.timeout(TWILIO_TIMEOUT_SECONDS):
                created = await self._client.messages.create_async(
                    to=channel_address(message.channel, message.to),
                    from_=channel_address(message.channel, message.from_),
                    status_callback=message.status_callback,
                    **_content(message),
                )
        except TwilioRestException as error:
            if error.status == 429 or error.status >= 500:
                # 429 (20429) was never processed; a 5xx may have been.
                raise RetryableError(
                    f"Twilio answered {error.status}", ambiguous=error.status >= 500
                ) from error
            raise SendFailed(str(error.msg or "Twilio refused the message"), error.code) from error
        except (aiohttp.ClientError, TimeoutError, TwilioException) as error:
            raise RetryableError(
                f"Twilio could not be reached ({type(error).__name__})", ambiguous=True
            ) from error
        finally:
            TWILIO_SECONDS.observe(time.perf_counter() - started)
        return SentMessage(sid=created.sid, status=_status(created.status))

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> list[SentMessage]:
        try:
            async with asyncio.timeout(TWILIO_TIMEOUT_SECONDS):
                # No DateSent filter: a message still queued has no send date and would be missed.
                # Twilio lists newest first, so the attempt in question is among the first few.
                candidates = await self._client.messages.list_async(
                    to=channel_address(message.channel, message.to),
                    from_=channel_address(message.channel, message.from_),
                    limit=50,
                    page_size=50,
                )
        except (TwilioRestException, aiohttp.ClientError, TimeoutError, TwilioException) as error:
            raise RetryableError(f"Twilio could not be asked ({type(error).__name__})") from error
        earliest = since - FIND_SKEW
        found = [
            SentMessage(sid=candidate.sid, status=_status(candidate.status))
            for candidate in candidates
            if _alike(candidate.body, candidate.direction, message)
            and (candidate.date_created is None or candidate.date_created >= earliest)
        ]
        found.reverse()  # oldest first
        return found

    async def aclose(self) -> None:
        await self._http.close()


class DryRunSender:
    """Twilio is not configured: replies are stored and logged, never sent."""

    async def send(self, message: OutgoingMessage) -> SentMessage:
        # Logged by the reply task (reply.dry_run), with the message it stored.
        await asyncio.sleep(0)
        return SentMessage(sid=None, status=MessageStatus.dry_run)

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> list[SentMessage]:
        return []

    async def aclose(self) -> None:
        return None


def create_sender(settings: Settings) -> MessageSender:
    if settings.twilio_configured:
        return TwilioSender(settings)
    return DryRunSender()
