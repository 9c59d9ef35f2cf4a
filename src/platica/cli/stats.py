"""`platica stats`: the conversation and message figures, per channel."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer

from platica.cli.common import fail, migrated_settings, with_session
from platica.models import Channel

STATS_ROWS = (
    ("total_conversations", "Conversations"),
    ("active_conversations", "  active"),
    ("total_messages", "Messages"),
    ("incoming_messages", "  incoming"),
    ("outgoing_messages", "  outgoing"),
    ("avg_response_time_ms", "Average response (ms)"),
    ("active_users_24h", "Active users, 24 h"),
    ("active_users_7d", "Active users, 7 days"),
)


def _figure(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def stats(
    account_id: Annotated[
        uuid.UUID | None, typer.Option(help="Only this account (default: all accounts).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: {channel: the API's /stats object}.")
    ] = False,
) -> None:
    """Print the conversation and message figures of both channels."""
    from platica.conversations.stats import channel_stats
    from platica.models import Account

    settings = migrated_settings()

    async def work(session: Any) -> dict[str, dict[str, Any]] | None:
        if account_id is not None and await session.get(Account, account_id) is None:
            return None
        return {
            channel.value: await channel_stats(session, channel, account_id) for channel in Channel
        }

    figures = with_session(settings, work)
    if figures is None:
        raise fail(f"no account {account_id}")
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(f"Plática stats, {'account ' + str(account_id) if account_id else 'all accounts'}")
    channels = list(figures)
    typer.echo(f"{'':<24}" + "".join(f"{name:>12}" for name in channels))
    for key, label in STATS_ROWS:
        values = [_figure(figures[c][key]) for c in channels]
        typer.echo(f"{label:<24}" + "".join(f"{value:>12}" for value in values))
