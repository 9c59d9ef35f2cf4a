"""The operators' web dashboard at /: log in, inbox, conversation, stats, settings, phone simulator.

Pages are rendered on the server (Jinja2); htmx polls the inbox and the open thread so they update
as messages arrive, and the server answers 204 when nothing changed. Reads and writes go through
the service functions the REST API uses (conversations/operators.py, inbox.py and stats.py), in
sessions scoped to the operator's account, so the dashboard sees exactly what the API would.

Each page has its module (login.py, inbox.py, conversation.py, broadcasts.py, stats.py,
settings.py, simulator.py; media.py serves a conversation's media items, recipients.py reads
a broadcast's CSV); web.py holds the plumbing (sessions,
CSRF, responses), session.py the cookie, display.py the words, alerts.py the banners.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from platica.dashboard import (
    broadcasts,
    conversation,
    inbox,
    login,
    media,
    settings,
    simulator,
    stats,
)
from platica.dashboard.web import (
    STATIC,
    CsrfRejected,
    LoginRequired,
    csrf_rejected,
    login_required,
)

PAGES = (login, inbox, conversation, media, broadcasts, stats, settings, simulator)


def install(app: FastAPI) -> None:
    """Serve the dashboard from `app`: its pages at /, its files at /static."""
    for page in PAGES:
        app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(CsrfRejected, csrf_rejected)
