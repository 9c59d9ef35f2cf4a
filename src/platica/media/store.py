"""The media rows' statements on the reply path: built once at import, run in db.transaction
(like replies/store.py's). The webhook inserts the rows (channels/inbound.py, postgresql.py).

A row is `pending` until the reply task has fetched it (`fetched`, its bytes kept) and
understood it (replies/reading.py), then `understood` or `failed`, for good: the reply that
needed it goes out either way. Every try is counted before it starts, so a crash mid-fetch
counts, and an item that keeps crashing its task is given up after MAX_ATTEMPTS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, select, update

from platica.db import Tx, Typed, any_of, fetch_all, one_of
from platica.models import MediaKind, MediaState, Message, MessageMedia

# Fetches of one item, crashes included, before it is given up.
MAX_ATTEMPTS = 3

_media = cast(Table, MessageMedia.__table__)
_c = _media.c
_m = cast(Table, Message.__table__).c


class Pending(NamedTuple):
    """A media item still to fetch (`pending`), or fetched and still to understand (`fetched`,
    with its bytes)."""

    id: int
    message_id: int
    kind: str
    content_type: str
    url: str | None
    state: str
    attempts: int
    content: bytes | None
    simulated: bool


# Not read yet: fetched and understood (or given up) before the message is answered.
UNREAD = one_of(_c.state, [MediaState.pending, MediaState.fetched])
PENDING = Typed(
    select(
        _c.id,
        _c.message_id,
        _c.kind,
        _c.content_type,
        _c.url,
        _c.state,
        _c.attempts,
        _c.content,
        _m.simulated,
    )
    .join_from(_media, cast(Table, Message.__table__), _m.id == _c.message_id)
    .where(any_of(_c.message_id, "ids"), UNREAD)
    .order_by(_c.message_id, _c.position),
    Pending,
)
# Counted before each try: a crash mid-fetch or mid-transcription uses up the attempt.
COUNT_ATTEMPT = update(_media).where(any_of(_c.id, "ids")).values(attempts=_c.attempts + 1)


async def fetch_pending(connection: Tx, message_ids: Sequence[int]) -> list[Pending]:
    """The messages' unread items, each with this attempt counted (`attempts` includes it)."""
    items = await fetch_all(connection, PENDING, {"ids": list(message_ids)})
    if items:
        await connection.execute(COUNT_ATTEMPT, {"ids": [item.id for item in items]})
    return [item._replace(attempts=item.attempts + 1) for item in items]


# The bytes as Twilio gave them, kept: understanding them may crash, and is then tried again
# without fetching them again.
STORE_FETCHED = (
    update(_media)
    .where(_c.id == bindparam("media_id"), _c.state == MediaState.pending)
    .values(
        state=MediaState.fetched,
        content=bindparam("content"),
        size_bytes=bindparam("size_bytes"),
        sha256=bindparam("sha256"),
        content_type=bindparam("new_content_type"),
        updated_at=bindparam("now"),
    )
)
# Understood or failed: for good.
SETTLE = (
    update(_media)
    .where(_c.id == bindparam("media_id"), UNREAD)
    .values(
        state=bindparam("new_state"),
        text=bindparam("text"),
        error=bindparam("error"),
        duration_seconds=bindparam("duration_seconds"),
        updated_at=bindparam("now"),
    )
)
DELETED = update(_media).where(_c.id == bindparam("media_id")).values(deleted_at=bindparam("at"))


class Attachment(NamedTuple):
    """A media item as the model reads it (replies/prompts.py)."""

    message_id: int
    kind: str
    content_type: str
    state: str
    text: str | None


ATTACHMENTS = Typed(
    select(_c.message_id, _c.kind, _c.content_type, _c.state, _c.text)
    .where(any_of(_c.message_id, "ids"))
    .order_by(_c.message_id, _c.position),
    Attachment,
)


class Picture(NamedTuple):
    """An image's bytes, for a model that sees images."""

    message_id: int
    content_type: str
    content: bytes


PICTURES = Typed(
    select(_c.message_id, _c.content_type, _c.content)
    .where(
        any_of(_c.message_id, "ids"),
        and_(
            _c.kind == MediaKind.image,
            _c.state == MediaState.understood,
            _c.content.is_not(None),
        ),
    )
    .order_by(_c.message_id, _c.position),
    Picture,
)
