"""Operations endpoints: /healthz (alive), /readyz (the database answers), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from platica.deps import AppState, StateDep
from platica.logging import get_logger
from platica.metrics import PARKED_CONVERSATIONS, PENDING_REPLIES
from platica.models import Conversation, Message, ReplyState

router = APIRouter(tags=["operations"])
log = get_logger(__name__)

READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database does not answer"}})
async def readyz(state: StateDep) -> JSONResponse:
    """The process can serve: its database answers a query."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:  # whatever the failure, the answer is "not ready"
        log.warning("readyz.database_unavailable", error=type(error).__name__)
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


_PENDING = (
    select(func.count())
    .select_from(Message)
    .where(Message.reply_state == ReplyState.pending)
    .scalar_subquery()
)
_PARKED = (
    select(func.count())
    .select_from(Conversation)
    .where(Conversation.parked_at.is_not(None))
    .scalar_subquery()
)


async def _count_pending(state: AppState) -> None:
    """Set the gauges counted at each scrape, in one query: the queue depth (a COUNT on the
    partial index of pending messages) and the parked conversations."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.engine.connect() as connection:
            row = (await connection.execute(select(_PENDING, _PARKED))).one()
    except Exception as error:  # the other metrics are still worth serving
        log.warning("metrics.pending_unavailable", error=type(error).__name__)
        PENDING_REPLIES.set(math.nan)
        PARKED_CONVERSATIONS.set(math.nan)
        return
    PENDING_REPLIES.set(row[0] or 0)
    PARKED_CONVERSATIONS.set(row[1] or 0)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    await _count_pending(state)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
