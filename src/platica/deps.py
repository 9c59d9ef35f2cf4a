"""What request handlers share: the application state and its Annotated dependency aliases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from platica.config import Settings
from platica.ratelimit import RateLimits
from platica.supabase import SupabaseKeys
from platica.throttle import Throttle

if TYPE_CHECKING:
    from platica.channels.sender import MessageSender
    from platica.conversations.retention import DailyCleanup
    from platica.db import DriverPool
    from platica.jobs.runner import Sweeper, TaskRunner
    from platica.media.fetch import TwilioMedia
    from platica.media.understand import Transcriber
    from platica.outreach.broadcaster import Broadcaster
    from platica.replies.generator import ReplyGenerator


@dataclass
class AppState:
    """Built by app.start_services; one per process."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    runner: TaskRunner | None = None
    sweeper: Sweeper | None = None
    generator: ReplyGenerator | None = None
    sender: MessageSender | None = None
    # Twilio's media (None in dry run: nothing is fetched), and the voice notes' transcriber
    # (None without an LLM: the offline responder says it cannot listen).
    media: TwilioMedia | None = None
    transcriber: Transcriber | None = None
    cleanup: DailyCleanup | None = None
    # In a working process: hands broadcasts' recipients over at their pace.
    broadcaster: Broadcaster | None = None
    # PostgreSQL: plain psycopg connections for the webhook's statements (db.open_driver_pool).
    driver_pool: DriverPool | None = None
    # Partly in memory, so per process (see ratelimit.py).
    limits: RateLimits = field(init=False)
    # Limits on unauthenticated callers (rejected webhooks, failed logins), in memory too.
    throttle: Throttle = field(init=False)
    # With SUPABASE_URL: the project's signing keys, cached in this process (supabase.py).
    supabase_keys: SupabaseKeys | None = field(init=False)

    def __post_init__(self) -> None:
        self.limits = RateLimits(self.settings)
        self.throttle = Throttle()
        url = self.settings.SUPABASE_URL
        self.supabase_keys = SupabaseKeys(url) if url else None

    def status_callback_url(self) -> str | None:
        """PUBLIC_BASE_URL's /webhook/status: never learned from a request's Host."""
        return self.settings.status_callback_url


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.platica
    return state


async def get_state(request: Request) -> AppState:
    """The dependency: async, as FastAPI runs a plain `def` one in its thread pool."""
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]
