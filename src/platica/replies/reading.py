"""Reading a batch's media before it is answered: each voice note, image and document is
fetched from Twilio and understood (transcribed, its text extracted, kept for the model), or
given up with why; never both, never neither, so the reply always goes out.

An item moves pending → fetched (its bytes kept) → understood | failed, each step in its own
short transaction; nothing is held meanwhile but the conversation's lease (renewed in the
background). Every try is counted first, so a crash mid-fetch or mid-transcription leaves the
item where it was with the try used up: the next run carries on from there (without fetching
again once fetched), and gives up on an item that has used up media.store.MAX_ATTEMPTS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from platica.logging import get_logger
from platica.media import store as media
from platica.media.fetch import MediaFetchFailed
from platica.media.kinds import READABLE_DOCUMENTS, bare_type
from platica.media.understand import UnderstandFailed, image_data_url, pdf_text
from platica.metrics import MEDIA_ITEMS
from platica.models import MediaKind, MediaState, utcnow
from platica.replies.context import ReplyContext
from platica.replies.store import Loaded

log = get_logger(__name__)

GAVE_UP = f"given up after {media.MAX_ATTEMPTS} attempts"
DRY_RUN = "not fetched: no Twilio credentials (dry run)"
SIMULATED = "not fetched: written in the simulator"
NO_KEY = "not transcribed: no OpenAI key (OPENAI_API_KEY)"


@dataclass(slots=True)
class _Outcome:
    """What became of an item: understood (with its text) or failed (with why)."""

    state: MediaState
    text: str | None = None
    error: str | None = None
    seconds: float | None = None


async def read_media(ctx: ReplyContext, loaded: Loaded, items: Sequence[media.Pending]) -> None:
    """Fetch and understand these unread items (media.fetch_pending: their tries counted),
    settling every one."""
    for item in items:
        outcome = await _read(ctx, loaded, item)
        async with ctx.transaction(durable=False) as connection:
            await connection.execute(
                media.SETTLE,
                {
                    "media_id": item.id,
                    "new_state": outcome.state,
                    "text": outcome.text,
                    "error": outcome.error,
                    "duration_seconds": outcome.seconds,
                    "now": utcnow(),
                },
            )
        MEDIA_ITEMS.labels(item.kind, outcome.state.value).inc()
        log.info(
            "media.read",
            conversation_id=loaded.conversation.id,
            media_id=item.id,
            kind=item.kind,
            state=outcome.state.value,
            error=outcome.error,
        )
        if (
            outcome.state == MediaState.understood
            and item.url
            and ctx.media is not None
            and loaded.config.delete_media_after_use
        ):
            await _delete_from_twilio(ctx, item)


async def _read(ctx: ReplyContext, loaded: Loaded, item: media.Pending) -> _Outcome:
    """Fetch the item when there is something to read in it (its bytes kept, `fetched`), then
    understand it."""
    kind = MediaKind(item.kind)
    if item.attempts > media.MAX_ATTEMPTS:
        return _Outcome(MediaState.failed, error=GAVE_UP)
    if kind == MediaKind.other or (
        kind == MediaKind.document and bare_type(item.content_type) not in READABLE_DOCUMENTS
    ):
        what = bare_type(item.content_type) or "this kind of"
        return _Outcome(MediaState.failed, error=f"Plática cannot open {what} files")
    content, content_type = item.content, item.content_type
    if content is None:
        if item.simulated or ctx.media is None or item.url is None:
            return _Outcome(MediaState.failed, error=SIMULATED if item.simulated else DRY_RUN)
        try:
            fetched = await ctx.media.fetch(item.url, content_type_hint=item.content_type)
        except MediaFetchFailed as error:
            return _Outcome(MediaState.failed, error=error.message)
        content, content_type = fetched.content, fetched.content_type or item.content_type
        async with ctx.transaction(durable=False) as connection:
            await connection.execute(
                media.STORE_FETCHED,
                {
                    "media_id": item.id,
                    "content": content,
                    "size_bytes": len(content),
                    "sha256": fetched.sha256,
                    "new_content_type": content_type[:128],
                    "now": utcnow(),
                },
            )
    try:
        if kind == MediaKind.audio:
            return await _transcribe(ctx, loaded, item, content, content_type)
        # Off the event loop: parsing a PDF or decoding an image is CPU work.
        if kind == MediaKind.document:
            text = await asyncio.to_thread(pdf_text, content)
            return _Outcome(MediaState.understood, text=text)
        # An image is understood once it opens: the model sees it (vision) or is told of it.
        await asyncio.to_thread(image_data_url, content, content_type)
    except UnderstandFailed as error:
        return _Outcome(MediaState.failed, error=error.message)
    return _Outcome(MediaState.understood)


async def _transcribe(
    ctx: ReplyContext, loaded: Loaded, item: media.Pending, content: bytes, content_type: str
) -> _Outcome:
    if ctx.transcriber is None:
        return _Outcome(MediaState.failed, error=NO_KEY)
    started = time.perf_counter()
    transcript = await ctx.transcriber.transcribe(content, content_type, loaded.config.language)
    log.info(
        "media.transcribed",
        media_id=item.id,
        seconds=transcript.seconds,
        took_ms=round((time.perf_counter() - started) * 1000),
    )
    return _Outcome(MediaState.understood, text=transcript.text, seconds=transcript.seconds)


async def _delete_from_twilio(ctx: ReplyContext, item: media.Pending) -> None:
    """Delete Twilio's copy (the account asked for it); Plática keeps its own. A failure is
    logged, not retried: the copy then stays with Twilio, as it would without the option."""
    assert ctx.media is not None
    assert item.url is not None
    try:
        await ctx.media.delete(item.url)
    except MediaFetchFailed as error:
        log.warning("media.delete_failed", media_id=item.id, error=error.message)
        return
    async with ctx.transaction(durable=False) as connection:
        await connection.execute(media.DELETED, {"media_id": item.id, "at": utcnow()})
