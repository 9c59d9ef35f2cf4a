"""The stats page: the figures of /api/{channel}/stats and charts of /api/{channel}/engagement."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from platica.conversations.stats import channel_stats, engagement
from platica.dashboard import display
from platica.dashboard.web import OperatorVisit, int_param, render
from platica.models import Channel

router = APIRouter(include_in_schema=False)

ENGAGEMENT_DAYS = (7, 30, 90)


@router.get("/stats")
async def stats_page(visit: OperatorVisit) -> Response:
    """The figures of /api/{channel}/stats and charts of /api/{channel}/engagement."""
    days = int_param(visit.request.query_params.get("days"), 30, 1, 366)
    if days not in ENGAGEMENT_DAYS:
        days = 30
    channels = []
    async with visit.db() as session:
        for channel in Channel:
            figures = await channel_stats(session, channel, visit.me.account_id)
            per_day = await engagement(session, channel, visit.me.account_id, days)
            channels.append(
                {
                    "channel": channel.value,
                    "name": display.CHANNEL_NAMES[channel.value],
                    "stats": figures,
                    "days": per_day,
                    "chart": {
                        "labels": [day["date"].isoformat() for day in per_day],
                        "incoming": [day["incoming_messages"] for day in per_day],
                        "outgoing": [day["outgoing_messages"] for day in per_day],
                        "replies": [day["replies"] for day in per_day],
                        "conversations": [day["conversations"] for day in per_day],
                        "response_seconds": [
                            None
                            if day["avg_response_time_ms"] is None
                            else round(day["avg_response_time_ms"] / 1000, 2)
                            for day in per_day
                        ],
                    },
                }
            )
    return render(
        visit, "stats.html", "stats", channels=channels, days=days, choices=ENGAGEMENT_DAYS
    )
