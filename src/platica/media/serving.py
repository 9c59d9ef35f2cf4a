"""A media item's bytes for operators (the dashboard's thread and the API): the copy Plática
kept, or else Twilio's, fetched with Plática's credentials for that one request and not stored.
The browser only ever sees Plática's URL: never Twilio's, never its credentials.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.errors import BadGateway, MediaUnavailable, NotFound
from platica.logging import get_logger
from platica.media.fetch import UNKNOWN_TYPE, Fetched, MediaFetchFailed, TwilioMedia
from platica.media.kinds import bare_type
from platica.models import Channel, MediaKind, Message, MessageMedia

log = get_logger(__name__)

# The bytes of an item never change: the browser may keep them (for this user only) while the
# thread re-renders around them.
CACHE_SECONDS = 3600
# Twilio's fetch retries what is transient; an operator waiting on a picture waits this long at
# most.
PROXY_TIMEOUT_SECONDS = 20.0
# Opened on its own (a new tab), an item runs nothing and loads nothing but itself: an SVG or an
# HTML file named image/… stays inert.
MEDIA_POLICY = (
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
)
# A type/subtype as RFC 6838 allows it; anything else is served as UNKNOWN_TYPE.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_KINDS = frozenset(MediaKind)
_RANGE = re.compile(r"bytes=(?P<start>\d{0,19})-(?P<end>\d{0,19})")
# What _byte_range says of a range that starts past the end: 416.
UNSATISFIABLE = (-1, -1)
# The extension of a served file's name, for what WhatsApp and SMS carry (none for the rest:
# the system's MIME tables differ from one machine to the next).
EXTENSIONS = {
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/wav": ".wav",
    "audio/webm": ".webm",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "text/plain": ".txt",
    "text/vcard": ".vcf",
    "text/x-vcard": ".vcf",
    "application/pdf": ".pdf",
    "application/msword": ".doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
}


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """A media item as its row has it, kept bytes included."""

    id: int
    kind: str
    content_type: str
    url: str | None
    content: bytes | None
    sha256: str | None
    deleted_at: datetime | None


async def find_media(
    session: AsyncSession,
    account_id: uuid.UUID | None,
    channel: Channel,
    media_id: int,
    conversation_id: int | None = None,
) -> StoredMedia:
    """The item, if it belongs to a message of the account's `channel` (and of that conversation,
    given one); NotFound otherwise, another account's item included (account None: the admin's
    view of all)."""
    statement = (
        select(
            MessageMedia.id,
            MessageMedia.kind,
            MessageMedia.content_type,
            MessageMedia.url,
            MessageMedia.content,
            MessageMedia.sha256,
            MessageMedia.deleted_at,
        )
        .join(Message, Message.id == MessageMedia.message_id)
        .where(MessageMedia.id == media_id, Message.channel == channel)
    )
    if conversation_id is not None:
        statement = statement.where(Message.conversation_id == conversation_id)
    if account_id is not None:
        statement = statement.where(MessageMedia.account_id == account_id)
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        raise NotFound(f"no {channel.value} media item {media_id}")
    return StoredMedia(*row)


async def media_response(
    item: StoredMedia, twilio: TwilioMedia | None, request_headers: Mapping[str, str]
) -> Response:
    """The item's bytes, as the browser may show them (pictures and sound in place, the rest as
    a download), or the range of them it asked for (a player seeks, and learns an Ogg voice
    note's length from its last bytes). Call it once the session's read is over: fetching
    from Twilio can take seconds, and no database connection should wait on it."""
    content_type = _media_type(item.content_type)
    if item.content is not None:
        content = item.content
    else:
        fetched = await _fetch(item, twilio)
        content = fetched.content
        if content_type == UNKNOWN_TYPE:
            content_type = _media_type(fetched.content_type)
    headers = {
        "Content-Disposition": _disposition(item, content_type),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": f"private, max-age={CACHE_SECONDS}",
        "Content-Security-Policy": MEDIA_POLICY,
        "Accept-Ranges": "bytes",
    }
    # Only kept bytes have a known digest before they are sent.
    if item.content is not None and item.sha256:
        headers["ETag"] = f'"{item.sha256}"'
        if headers["ETag"] in request_headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
    wanted = _byte_range(request_headers.get("range"), len(content))
    if wanted is None:
        return Response(content, media_type=content_type, headers=headers)
    if wanted == UNSATISFIABLE:
        headers["Content-Range"] = f"bytes */{len(content)}"
        return Response(status_code=416, headers=headers)
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{len(content)}"
    return Response(
        content[first : last + 1], status_code=206, media_type=content_type, headers=headers
    )


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a `Range: bytes=…` header's one range (RFC 9110, 14.1.2), within
    `size`; None for no header, several ranges or one that cannot be read (the whole body is
    sent then); UNSATISFIABLE for a range past the end."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or size == 0 or not (match["start"] or match["end"]):
        return None
    start, end = match["start"], match["end"]
    if not start:
        if int(end) == 0:
            return UNSATISFIABLE
        return max(size - int(end), 0), size - 1
    first = int(start)
    last = min(int(end), size - 1) if end else size - 1
    if end and int(end) < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, last


def _media_type(declared: str) -> str:
    bare = bare_type(declared)
    return bare if _MEDIA_TYPE.fullmatch(bare) else UNKNOWN_TYPE


def _disposition(item: StoredMedia, content_type: str) -> str:
    """Inline for pictures and sound, an attachment for the rest; the name is Plática's own
    (`audio-12.ogg`), never one a sender chose."""
    extension = EXTENSIONS.get(content_type, "")
    kind = item.kind if item.kind in _KINDS else "media"
    name = f"{kind}-{item.id}{extension}"
    shown = content_type.startswith(("image/", "audio/")) and content_type != "image/svg+xml"
    return f'{"inline" if shown else "attachment"}; filename="{name}"'


async def _fetch(item: StoredMedia, twilio: TwilioMedia | None) -> Fetched:
    """Twilio's copy of an item Plática kept no bytes of (still pending, failed, or older than
    keeping them), when its URL is one Plática's credentials may go to."""
    missing = f"media item {item.id}: Plática kept no copy of it"
    if item.kind == MediaKind.location:
        raise MediaUnavailable(f"media item {item.id} is a location: it has no file")
    if item.url is None:
        raise MediaUnavailable(f"{missing}, and Twilio gave no URL for it")
    if item.deleted_at is not None:
        raise MediaUnavailable(f"{missing}, and Twilio's copy was deleted")
    if twilio is None:
        raise MediaUnavailable(f"{missing}, and Twilio is not configured (dry run) to fetch it")
    if not twilio.allowed(item.url):
        raise MediaUnavailable(
            f"{missing}, and its URL is not a media URL of this Twilio account, so it is not "
            "fetched"
        )
    try:
        async with asyncio.timeout(PROXY_TIMEOUT_SECONDS):
            fetched = await twilio.fetch(item.url, content_type_hint=item.content_type)
    except TimeoutError as error:
        raise BadGateway(
            f"media item {item.id}: Twilio took longer than {PROXY_TIMEOUT_SECONDS:g} s; "
            "try again later"
        ) from error
    except MediaFetchFailed as error:
        message = f"media item {item.id}: Twilio's copy could not be fetched ({error.message})"
        if error.retryable:
            raise BadGateway(message + "; try again later") from error
        raise MediaUnavailable(message) from error
    log.info("media.proxied", media_id=item.id, size_bytes=len(fetched.content))
    return fetched
