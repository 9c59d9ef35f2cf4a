"""A conversation's media on its page: how the thread shows each item (a player, a picture, a
document, a map link), and the route that serves their bytes to the conversation's operators
(media/serving.py, shared with GET /api/{channel}/media/{id})."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from platica.dashboard.i18n import _
from platica.dashboard.web import (
    AnyVisit,
    conversation_key,
    error_page,
    not_found,
    row_id,
    send_file,
)
from platica.deps import AppState
from platica.errors import BadGateway, MediaUnavailable, NotFound
from platica.logging import get_logger
from platica.media import serving
from platica.media.kinds import bare_type
from platica.models import MediaKind, MediaState, Message, MessageMedia

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

MAP_URL = "https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=17/{lat}/{lon}"
DOCUMENT_NAMES = {
    "application/pdf": "PDF",
    "application/msword": "Word",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word",
    "application/vnd.ms-excel": "Excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "Excel",
}
LOCATION_PREFIX = "location: "


def fetchable(state: AppState) -> Callable[[str], bool]:
    """Whether an item Plática kept no bytes of can be fetched from Twilio for an operator."""
    twilio = state.media
    return twilio.allowed if twilio is not None else lambda _url: False


def media_items(
    message: Message, base_url: str, can_fetch: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """The message's items as the thread shows them (`base_url`: the conversation's page)."""
    return [_item(item, base_url, can_fetch) for item in message.media]


def _item(item: MessageMedia, base_url: str, can_fetch: Callable[[str], bool]) -> dict[str, Any]:
    # size_bytes is written with the kept bytes, so the page need not load them.
    kept = item.size_bytes is not None
    from_twilio = item.url is not None and item.deleted_at is None and can_fetch(item.url)
    servable = item.kind != MediaKind.location and (kept or from_twilio)
    text = item.text
    if item.kind == MediaKind.location and text:
        text = text.removeprefix(LOCATION_PREFIX)
    return {
        "id": item.id,
        "kind": str(item.kind),
        "content_type": item.content_type,
        "state": str(item.state),
        "label": _label(item),
        "src": f"{base_url}/media/{item.id}" if servable else None,
        "text": text,
        "reading": item.state in (MediaState.pending, MediaState.fetched),
        "error": (item.error or _("unknown error")) if item.state == MediaState.failed else None,
        "duration": _clock(item.duration_seconds),
        "size": _size(item.size_bytes),
        "map_url": _map_url(item),
    }


def _label(item: MessageMedia) -> str:
    bare = bare_type(item.content_type)
    if item.kind == MediaKind.audio:
        return _("Voice note")
    if item.kind == MediaKind.image:
        return _("Image")
    if item.kind == MediaKind.document:
        return _("Document (%(kind)s)", kind=DOCUMENT_NAMES.get(bare, bare or _("file")))
    if item.kind == MediaKind.location:
        return _("Location")
    return _("Attachment (%(kind)s)", kind=bare or _("unknown type"))


def _clock(seconds: float | None) -> str | None:
    """0:07, 2:45."""
    if seconds is None:
        return None
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _size(count: int | None) -> str | None:
    if count is None:
        return None
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} KB"
    return f"{count / (1024 * 1024):.1f} MB"


def _map_url(item: MessageMedia) -> str | None:
    if item.latitude is None or item.longitude is None:
        return None
    return MAP_URL.format(lat=f"{item.latitude:.6f}", lon=f"{item.longitude:.6f}")


@router.get("/conversations/{channel}/{conversation_id}/media/{media_id}")
async def media_file(
    visit: AnyVisit, channel: str, conversation_id: str, media_id: str
) -> Response:
    """A media item of the conversation, for its operators: the bytes Plática kept, or Twilio's
    copy fetched for this request."""
    operator = visit.me  # no alerts: a picture is not a page
    key = conversation_key(channel, conversation_id)
    number = row_id(media_id)
    if key is None or number is None:
        return not_found(visit, "such media item")
    try:
        async with visit.db() as session:
            item = await serving.find_media(session, operator.account_id, key[0], number, key[1])
        response = await serving.media_response(item, visit.state.media, visit.request.headers)
    except MediaUnavailable as problem:
        return error_page(visit, 404, _("Media unavailable"), _sentence(problem.message))
    except NotFound:
        return not_found(visit, "such media item")
    except BadGateway as problem:
        log.info("dashboard.media_unavailable", media_id=number, reason=problem.message)
        return error_page(visit, 502, _("Twilio did not answer"), _sentence(problem.message))
    return send_file(visit, response)


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + "."
