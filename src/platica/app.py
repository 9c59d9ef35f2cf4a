"""create_app(): the ASGI application, with a lifespan that owns the engine and start-up checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from platica import db, ops
from platica.accounts import ensure_default_account
from platica.channels import webhook
from platica.config import ConfigError, Settings, get_settings
from platica.deps import AppState
from platica.errors import install_error_handlers
from platica.logging import configure_logging, get_logger

log = get_logger(__name__)


async def _check_schema(settings: Settings) -> None:
    """SQLite (the embedded default) is migrated automatically; PostgreSQL must be migrated first."""
    if settings.is_sqlite:
        await db.upgrade_async(settings.DATABASE_URL)
        return
    import asyncio

    current = await asyncio.to_thread(db.current_revision, settings.DATABASE_URL)
    if current != db.head_revision():
        raise ConfigError(
            f"DATABASE_URL: the database schema is at {current or 'nothing'}, "
            f"not {db.head_revision()}; run `platica db upgrade`"
        )


def _warn_about_insecure_defaults(settings: Settings) -> None:
    if not settings.twilio_configured:
        log.warning(
            "startup.twilio_not_configured",
            detail="TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset: webhook signatures are NOT checked "
            "and replies are not sent (dry run). Never expose this instance to the internet.",
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The Plática ASGI app; mount it in another Starlette/FastAPI app or serve it directly."""
    settings = settings or get_settings()
    configure_logging(settings)
    if settings.SENTRY_DSN:
        import sentry_sdk

        sentry_sdk.init(dsn=settings.SENTRY_DSN, send_default_pii=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _check_schema(settings)
        engine = db.create_engine(settings.DATABASE_URL)
        sessionmaker = db.create_sessionmaker(engine)
        async with db.transaction(sessionmaker) as session:
            await ensure_default_account(session, settings)
        _warn_about_insecure_defaults(settings)
        app.state.platica = AppState(settings=settings, engine=engine, sessionmaker=sessionmaker)
        log.info("startup.ready", database=engine.dialect.name)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Plática",
        summary="Answers WhatsApp and SMS conversations automatically with an LLM, through Twilio.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(webhook.router)
    app.include_router(ops.router)
    return app
