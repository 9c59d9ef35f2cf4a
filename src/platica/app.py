"""create_app(): the ASGI application; its lifespan owns the engine, the clients and the worker."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from platica import apidocs, db, ops
from platica.accounts import ensure_default_account
from platica.api import accounts as api_accounts
from platica.api import outreach as api_outreach
from platica.api import routes as api_routes
from platica.api import templates as api_templates
from platica.channels import webhook
from platica.channels.sender import create_sender
from platica.config import ConfigError, Settings, get_settings
from platica.conversations.retention import DailyCleanup
from platica.dashboard import routes as dashboard
from platica.deps import AppState
from platica.errors import error_body, install_error_handlers
from platica.jobs.locks import LeaseLocks
from platica.jobs.postgres import PostgresRunner
from platica.jobs.runner import InProcessRunner, Sweeper, TaskRunner
from platica.jobs.turns import RequestsFirst, Turns
from platica.logging import configure_logging, get_logger
from platica.media.fetch import TwilioMedia
from platica.media.understand import create_transcriber
from platica.outreach.broadcaster import Broadcaster
from platica.replies.context import ReplyContext
from platica.replies.generator import OfflineReplyGenerator, create_generator
from platica.replies.pipeline import reply_to_conversation, reply_to_next_due

log = get_logger(__name__)

# Allocations (net of deallocations) between two collections of the youngest generation.
GC_YOUNG_THRESHOLD = 10_000
# How long a request may take to send its whole body (Twilio's are a few KiB, sent at once).
BODY_TIMEOUT_SECONDS = 10.0


class BodyTimeout:
    """ASGI middleware: a request body must arrive whole within `seconds` of the request,
    else 408. A body that trickles in (or never ends) would otherwise hold its connection
    and what it sent so far for as long as the client likes."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        received = False

        async def receive_in_time() -> Message:
            nonlocal received
            if received:
                # The body is in: what follows is waiting for a disconnect, which may be long.
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # An HTTPException, so that FastAPI's body parsing passes it on unchanged.
                raise HTTPException(
                    status_code=408,
                    detail=f"the request body did not arrive within {self.seconds:g} s",
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                received = True
            return message

        await self.app(scope, receive_in_time, send)


NOT_STARTED_MESSAGE = (
    "Plática has not started: its lifespan did not run (Starlette does not run a mounted app's "
    "lifespan). Create the app that mounts it with "
    "FastAPI(lifespan=platica.lifespan(platica_app)), or enter "
    "platica_app.router.lifespan_context(platica_app) from your own lifespan."
)


class RequireStarted:
    """ASGI middleware: until the app's lifespan has built its state, every request gets 503
    `not_started` saying how to wire it, rather than a 500 from deep inside a route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette sets scope["app"] to this very app before its middleware runs, mounted or not.
        if scope["type"] == "http" and getattr(scope["app"].state, "platica", None) is None:
            response = JSONResponse(error_body("not_started", NOT_STARTED_MESSAGE), 503)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def lifespan(platica_app: FastAPI) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """The lifespan for an app that mounts Plática, which Starlette would otherwise never start:

        platica_app = create_app()
        app = FastAPI(lifespan=platica.lifespan(platica_app))
        app.mount("/platica", platica_app)

    Plática's services (engine, clients, worker) start once, before the outer app serves its
    first request, and stop after its last; with a lifespan of your own, enter
    `platica_app.router.lifespan_context(platica_app)` in it instead.
    """

    @asynccontextmanager
    async def run(_outer: object) -> AsyncIterator[None]:
        async with platica_app.router.lifespan_context(platica_app):
            yield

    return run


def check_schema(settings: Settings) -> None:
    """SQLite (the embedded default) is migrated here; PostgreSQL must be migrated beforehand,
    since several processes may share it (blocking)."""
    if settings.is_sqlite:
        db.upgrade(settings.DATABASE_URL)
        return
    current = db.current_revision(settings.DATABASE_URL)
    if current != db.head_revision():
        raise ConfigError(
            f"DATABASE_URL: the database schema is at {current or 'nothing'}, "
            f"not {db.head_revision()}; run `platica db upgrade`"
        )


def _warn_about_defaults(settings: Settings) -> None:
    if not settings.twilio_configured:
        log.warning(
            "startup.twilio_not_configured",
            detail="TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset: webhook signatures are NOT checked "
            "and replies are stored but not sent (dry run). Never expose this to the internet.",
        )
    ignored = settings.ignored_seed_secrets
    if ignored:
        # Someone migrating from the original services must not believe these protect anything.
        protection = (
            "Twilio's X-Twilio-Signature header, checked with TWILIO_AUTH_TOKEN"
            if settings.twilio_configured
            else "nothing yet: set TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN so that Twilio's "
            "X-Twilio-Signature header is checked"
        )
        log.warning(
            "startup.seed_secrets_ignored",
            variables=ignored,
            detail=f"{' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored: "
            f"Plática does not use webhook secrets. What protects the webhooks: {protection}. "
            "Remove the variable to silence this warning.",
        )


async def start_services(settings: Settings, *, work: bool, turns: Turns | None = None) -> AppState:
    """Engine, clients, task runner and (when `work`) the workers, sweeper and daily cleanup of
    one process. On SQLite, given the server's `turns`, its workers yield to its requests."""
    await asyncio.to_thread(check_schema, settings)
    engine = db.create_engine(settings.DATABASE_URL, pool_size=settings.DATABASE_POOL_SIZE)
    sessionmaker = db.create_sessionmaker(engine)
    async with db.session(sessionmaker) as session:
        await ensure_default_account(session, settings)
    generator = create_generator(settings)
    sender = create_sender(settings)
    state = AppState(settings=settings, engine=engine, sessionmaker=sessionmaker)
    if settings.twilio_configured:
        state.media = TwilioMedia(settings)
    state.transcriber = create_transcriber(settings)
    if not settings.is_sqlite:
        # The statements every message runs (the webhook's, the reply path's) skip SQLAlchemy.
        state.driver_pool = await db.open_driver_pool(
            settings.DATABASE_URL, size=settings.DATABASE_POOL_SIZE
        )
    locks = LeaseLocks(sessionmaker, driver_pool=state.driver_pool)
    context = ReplyContext(
        settings=settings,
        sessionmaker=sessionmaker,
        generator=generator,
        sender=sender,
        locks=locks,
        status_callback=state.status_callback_url,
        driver_pool=state.driver_pool,
        media=state.media,
        transcriber=state.transcriber,
    )
    handler = functools.partial(reply_to_conversation, context)
    concurrency = settings.WORKER_CONCURRENCY
    runner: TaskRunner = (
        InProcessRunner(handler, concurrency, turns)
        if settings.is_sqlite
        else PostgresRunner(
            settings.DATABASE_URL,
            engine,
            functools.partial(reply_to_next_due, context),
            concurrency,
            driver_pool=state.driver_pool,
        )
    )
    await runner.start(work=work)
    sweeper = Sweeper(sessionmaker, runner, state.driver_pool)
    if work:
        await sweeper.start()
        state.cleanup = DailyCleanup(sessionmaker)
        await state.cleanup.start()
        state.broadcaster = Broadcaster(db.Database(sessionmaker, state.driver_pool), runner)
        await state.broadcaster.start()
    state.runner, state.sweeper, state.generator, state.sender = runner, sweeper, generator, sender
    _warn_about_defaults(settings)
    if isinstance(generator, OfflineReplyGenerator):
        log.warning(
            "startup.offline_responder",
            detail="no OPENAI_API_KEY or OPENAI_BASE_URL: canned replies",
        )
    log.info("startup.ready", database=engine.dialect.name, worker=work)
    return state


def settle_garbage_collector() -> None:
    """Keep Python's full garbage collections short once the process is up.

    Everything loaded at start-up (modules, the ORM's mappings, FastAPI's routes) lives as
    long as the process; frozen, the cyclic collector stops walking it on every full
    collection, which otherwise pauses the event loop for tens of milliseconds, mid-request.
    A larger youngest generation lets each request's short-lived objects die before they are
    promoted to the older ones.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def stop_services(state: AppState) -> None:
    if state.broadcaster is not None:
        await state.broadcaster.stop()
    if state.cleanup is not None:
        await state.cleanup.stop()
    if state.sweeper is not None:
        await state.sweeper.stop()
    if state.runner is not None:
        await state.runner.stop()
    if state.sender is not None:
        await state.sender.aclose()
    if state.generator is not None:
        await state.generator.aclose()
    if state.media is not None:
        await state.media.aclose()
    if state.transcriber is not None:
        await state.transcriber.aclose()
    if state.driver_pool is not None:
        await state.driver_pool.close()
    await state.engine.dispose()


def create_app(settings: Settings | None = None, *, worker: bool = True) -> FastAPI:
    """The Plática ASGI app. With `worker`, this process also answers messages in the background.

    Mounted inside another app, it starts with that app's lifespan: see `lifespan()`. Until it
    has started, it answers 503 `not_started`.
    """
    settings = settings or get_settings()
    configure_logging(settings)
    # SQLite's worker shares this process's event loop: it takes turns with the requests.
    turns = Turns() if settings.is_sqlite and worker else None
    if settings.SENTRY_DSN:
        import sentry_sdk

        sentry_sdk.init(dsn=settings.SENTRY_DSN, send_default_pii=False)

    starting = False

    @asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[None]:
        # The state goes on this app, whichever app's lifespan runs this (see `lifespan()`);
        # entered once at a time, so no two engines are ever built for it.
        nonlocal starting
        if starting:
            raise RuntimeError("Plática's lifespan is already running for this app")
        starting = True
        try:
            state = await start_services(settings, work=worker, turns=turns)
            app.state.platica = state
            settle_garbage_collector()
            try:
                yield
            finally:
                del app.state.platica
                await stop_services(state)
        finally:
            starting = False

    app = FastAPI(
        title="Plática",
        summary="Answers WhatsApp and SMS conversations automatically with an LLM, through Twilio.",
        version="0.1.0",
        lifespan=run,
        # /docs from vendored files (apidocs.py); no ReDoc, which would load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyTimeout, seconds=BODY_TIMEOUT_SECONDS)
    if turns is not None:
        app.add_middleware(RequestsFirst, turns=turns)
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequireStarted)
    # Outermost: a request naming another host gets 400 before anything reads its Host.
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts, www_redirect=False
    )
    app.include_router(webhook.router)
    app.include_router(api_accounts.router)
    app.include_router(api_routes.router)
    app.include_router(api_outreach.router)
    app.include_router(api_templates.router)
    app.include_router(ops.router)
    dashboard.install(app)
    apidocs.install(app)
    return app
