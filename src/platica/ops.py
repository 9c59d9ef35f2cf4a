"""Operations endpoints: /healthz (alive), /readyz (the database answers), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import hmac
import math
from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import ScalarSelect, func, select, text

from platica.deps import AppState, StateDep
from platica.logging import get_logger
from platica.metrics import (
    BUDGETS_SPENT,
    OLDEST_PENDING_SECONDS,
    PARKED_CONVERSATIONS,
    PENDING_REPLIES,
    exposition,
)
from platica.models import ChannelConfig, Conversation, Message, ReplyState, utcnow

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
_OLDEST = (
    select(func.min(Message.created_at))
    .where(Message.reply_state == ReplyState.pending)
    .scalar_subquery()
)
_PARKED = (
    select(func.count())
    .select_from(Conversation)
    .where(Conversation.parked_at.is_not(None))
    .scalar_subquery()
)


def _spent(now: datetime) -> ScalarSelect[int]:
    return (
        select(func.count())
        .select_from(ChannelConfig)
        .where(
            ChannelConfig.daily_token_budget.is_not(None),
            ChannelConfig.tokens_day == now.date(),
            ChannelConfig.tokens_used >= ChannelConfig.daily_token_budget,
        )
        .scalar_subquery()
    )


async def _count_pending(state: AppState) -> None:
    """Set the gauges counted at each scrape, in one query: the backlog (pending messages and
    the oldest one's wait, on the partial index of pending messages), the parked conversations
    and the spent budgets."""
    now = utcnow()
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.engine.connect() as connection:
            row = (await connection.execute(select(_PENDING, _OLDEST, _PARKED, _spent(now)))).one()
    except Exception as error:  # the other metrics are still worth serving
        log.warning("metrics.pending_unavailable", error=type(error).__name__)
        for gauge in (PENDING_REPLIES, OLDEST_PENDING_SECONDS, PARKED_CONVERSATIONS, BUDGETS_SPENT):
            gauge.set(math.nan)
        return
    pending, oldest, parked, spent = row
    PENDING_REPLIES.set(pending or 0)
    OLDEST_PENDING_SECONDS.set(max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
    PARKED_CONVERSATIONS.set(parked or 0)
    BUDGETS_SPENT.set(spent or 0)


def _check_metrics_token(request: Request, state: AppState) -> None:
    """With METRICS_TOKEN set, the scraper must send it as a bearer token (401 otherwise)."""
    expected = state.settings.METRICS_TOKEN
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="send Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get("/metrics", responses={401: {"description": "METRICS_TOKEN is set and not sent"}})
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus metrics, the worker processes' included (with METRICS_TOKEN set:
    `Authorization: Bearer <METRICS_TOKEN>`)."""
    _check_metrics_token(request, state)
    await _count_pending(state)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
