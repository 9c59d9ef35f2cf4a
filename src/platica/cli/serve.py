"""`platica serve` and `platica worker`: the long-running processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from platica.cli.common import (
    check_schema_or_exit,
    load_settings,
    migrated_settings,
    with_session,
)
from platica.config import Settings, check_listen_host

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# `serve`'s worker child runs this module (not imported here: `-m` would run it twice).
CHILD_MODULE = "platica.cli.child"


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: HOST, else 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on [default: PORT, else 8000]."),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(
            help="Also answer messages: on PostgreSQL in a child process, on SQLite in this one "
            "(--no-worker: API only)."
        ),
    ] = True,
) -> None:
    """Serve the webhooks and the API (and, by default, answer messages).

    On PostgreSQL the worker runs as a supervised child process (`platica worker` at a lower CPU
    priority, restarted if it dies, stopped with the server): replies then use another core and
    yield the CPU to webhook acknowledgements. On SQLite it runs in this process.
    """
    import uvicorn

    from platica.app import create_app
    from platica.dashboard.session import LOGIN_LINK_SECONDS

    if host is not None:
        try:
            host = check_listen_host(host)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--host") from None
    settings = migrated_settings()
    host = host if host is not None else settings.HOST
    port = port if port is not None else settings.PORT
    if not worker and settings.is_sqlite:
        typer.echo("Warning: with SQLite and --no-worker, nothing will answer messages.", err=True)
    child_worker = worker and not settings.is_sqlite
    application = create_app(settings, worker=worker and not child_worker)
    link = _first_run_login_link(settings)  # after create_app: its logging masks numbers
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    if host in ("0.0.0.0", "::") and "*" not in settings.ALLOWED_HOSTS:
        typer.echo(
            f"Requests must name one of these hosts: {', '.join(settings.trusted_hosts)} "
            "(others get 400; add yours to ALLOWED_HOSTS).",
            err=True,
        )
    typer.echo(f"Plática on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    typer.echo(f'Try it: platica simulate --url http://{shown}:{port} --from +15550100001 "Hola"')
    typer.echo(
        f"Dashboard: http://{shown}:{port}/ - log in with an API key "
        "(`platica accounts list`, then `platica accounts keys create ACCOUNT_ID`) "
        "or with PLATICA_ADMIN_TOKEN."
    )
    if link is not None:
        base = settings.PUBLIC_BASE_URL or f"http://{shown}:{port}"
        minutes = LOGIN_LINK_SECONDS // 60
        typer.echo(
            f"First run: log in to the default account's dashboard with {base}/login/link/{link} "
            f"(works once, for {minutes} minutes)."
        )

    def run() -> None:
        uvicorn.run(
            application,
            host=host,
            port=port,
            log_config=None,
            proxy_headers=True,
            server_header=False,
        )

    if not child_worker:
        typer.echo("Worker: in this process." if worker else "Worker: none here (--no-worker).")
        run()
        return
    with _child_worker() as pid:
        shown_pid = pid if pid is not None else "not started yet (see the log)"
        typer.echo(f"Worker: child process pid {shown_pid} (lower CPU priority).")
        run()


def _first_run_login_link(settings: Settings) -> str | None:
    """On the first start (the default account created now, as the server would at start-up):
    a one-time login link's token for it; None on every later start."""
    from platica.accounts import ensure_default_account
    from platica.dashboard.session import issue_login_link

    async def work(session: AsyncSession) -> str | None:
        account_id = await ensure_default_account(session, settings)
        return None if account_id is None else await issue_login_link(session, account_id)

    return with_session(settings, work)


@contextlib.contextmanager
def _child_worker() -> Iterator[int | None]:
    """`platica worker` as a supervised child process while the block runs; its pid.

    uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again. Left to its default
    action, that would end this process before it could stop the worker (the kernel would then
    kill the worker outright), so here the signal ends the block (exit status 0), and the
    worker is stopped in order: SIGTERM, then SIGKILL after 10 s.
    """
    from platica import metrics
    from platica.supervise import WorkerSupervisor, child_command

    def exit_quietly(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    # The child keeps its metrics in files there, which this process's /metrics adds in.
    directory, created = metrics.share_with_workers()
    previous = {signum: signal.signal(signum, exit_quietly) for signum in STOP_SIGNALS}
    supervisor = WorkerSupervisor(child_command(CHILD_MODULE), on_exit=metrics.process_dead)
    try:
        yield supervisor.start()
    finally:
        # A second signal while the worker stops acts as usual (and the kernel kills the worker).
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        supervisor.stop()
        metrics.stop_sharing(directory, created=created)


def worker() -> None:
    """Answer messages without serving HTTP (PostgreSQL: run as many as you like)."""
    from platica import metrics
    from platica.app import settle_garbage_collector, start_services, stop_services
    from platica.logging import configure_logging, get_logger

    settings = load_settings()
    if settings.is_sqlite:
        typer.echo(
            "Error: with SQLite the worker runs inside `platica serve`; "
            "separate workers need PostgreSQL (DATABASE_URL=postgresql://...).",
            err=True,
        )
        raise typer.Exit(2)
    check_schema_or_exit(settings)
    configure_logging(settings)
    if not metrics.file_backed():
        get_logger(__name__).warning(
            "worker.metrics_unshared",
            detail="PROMETHEUS_MULTIPROC_DIR is not set: this worker's metrics reach no "
            "/metrics (set it, to the same directory, for `platica serve` and every worker)",
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        state = await start_services(settings, work=True)
        # As `serve` does once started: full collections skip what start-up loaded (they took
        # 150-190 ms each, every few seconds under load).
        settle_garbage_collector()
        try:
            await stop.wait()
        finally:
            await stop_services(state)
            # Its live gauges go; its counters stay, so that the totals never go down.
            metrics.process_dead(os.getpid())

    with asyncio.Runner(loop_factory=_fast_event_loop()) as runner:
        runner.run(run())


def _fast_event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (with uvicorn[standard], as `serve` uses it):
    each database round trip and HTTP call costs the worker less CPU than on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
