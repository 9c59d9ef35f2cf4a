"""The dashboard's plumbing: who is looking (the Visit), CSRF-checked forms, and responses
(pages, polled fragments, redirects) that carry the session cookie and security headers."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from platica.api.auth import scope_session
from platica.dashboard import display, i18n
from platica.dashboard.alerts import Alert, alerts
from platica.dashboard.i18n import N_, _
from platica.dashboard.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    LINK_SESSION,
    CookieSession,
    admin_fingerprint,
    link_session_account,
    session_open,
)
from platica.dashboard.session import load as load_session
from platica.dashboard.session import save as save_session
from platica.deps import AppState, app_state
from platica.http import (
    FormData,
    Upload,
    app_path,
    first,
    mount_prefix,
    parse_form,
    parse_upload,
    read_body,
)
from platica.models import Account, ApiKey, Channel

HERE = Path(__file__).parent
STATIC = HERE / "static"
# Jinja2's i18n extension (newstyle gettext): `_()` and `{% trans %}` speak the request's
# language (dashboard/i18n.py).
_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    extensions=["jinja2.ext.i18n"],
)
_environment.install_gettext_callables(  # type: ignore[attr-defined]
    i18n.gettext, i18n.ngettext, newstyle=True
)
templates = Jinja2Templates(env=_environment)

# Changes whenever our CSS or JS does, so browsers never run a stale copy.
ASSET_VERSION = hashlib.sha256(
    b"".join((STATIC / name).read_bytes() for name in ("app.css", "app.js"))
).hexdigest()[:10]
# How often open pages ask for changes (the server answers 204 when there are none). Read at
# each request (`web.POLL_SECONDS`), so that tests can make it shorter.
POLL_SECONDS = 3.0
SECURITY_HEADERS = {
    # Everything is served from here (no CDN), media included: Plática serves them itself
    # (dashboard/media.py), so no page loads anything from Twilio or anywhere else.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; media-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No one is logged in (or the key was revoked): off to the login page."""


class CsrfRejected(Exception):
    """A POST without this session's CSRF token."""


@dataclass(frozen=True)
class Operator:
    """Who is looking, and at whose data."""

    kind: str  # "api_key", "admin" or "link" (a one-time login link's account)
    account_id: uuid.UUID | None  # the account every page shows; None: all of them (admin)
    account_name: str | None
    accounts: list[tuple[uuid.UUID, str]] = field(default_factory=list)  # admin: to switch

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


@dataclass
class Visit:
    """One request to the dashboard: the app's state, the cookie and the operator, if any."""

    request: Request
    state: AppState
    cookie: CookieSession
    operator: Operator | None
    # Banners for the operator (dashboard/alerts.py), on every page.
    alerts: list[Alert] = field(default_factory=list)

    @property
    def root(self) -> str:
        """The path the app is mounted at ("" at the top)."""
        return mount_prefix(self.request)

    @property
    def me(self) -> Operator:
        if self.operator is None:
            raise LoginRequired
        return self.operator

    @asynccontextmanager
    async def db(self) -> AsyncIterator[AsyncSession]:
        """A session that sees only the operator's account (row-level security on PostgreSQL)."""
        async with self.state.sessionmaker() as session:
            scope_session(session, self.operator.account_id if self.operator else None)
            yield session


# -- who is logged in ------------------------------------------------------------------------------


async def _operator(state: AppState, cookie: CookieSession) -> Operator | None:
    """The operator the cookie names, checked afresh: a revoked key, a new admin token or a
    logout (its dashboard_sessions row gone) ends it."""
    async with state.sessionmaker() as session:
        if not cookie.sid or not await session_open(session, cookie.sid):
            return None
        if cookie.kind == "admin":
            expected = admin_fingerprint(state.settings)
            if expected is None or cookie.credential != expected:
                return None
            rows = await session.execute(
                select(Account.id, Account.name).order_by(Account.name, Account.created_at)
            )
            accounts = [(row.id, row.name) for row in rows]
            names = dict(accounts)
            viewing = uuid_or_none(cookie.viewing)
            if viewing not in names:
                # With a single account, "all accounts" and that account are the same thing.
                viewing = accounts[0][0] if len(accounts) == 1 else None
            return Operator("admin", viewing, names.get(viewing) if viewing else None, accounts)
        if cookie.kind == "api_key" and cookie.credential:
            row = (
                await session.execute(
                    select(ApiKey.account_id, Account.name)
                    .join(Account, Account.id == ApiKey.account_id)
                    .where(ApiKey.key_hash == cookie.credential, ApiKey.revoked_at.is_(None))
                )
            ).first()
            if row is None or str(row.account_id) != cookie.account_id:
                return None
            return Operator("api_key", row.account_id, row.name)
        if cookie.kind == LINK_SESSION:
            # The session's own row holds its account (deleted with it, or at logout).
            account_id = await link_session_account(session, cookie.sid)
            if account_id is None or str(account_id) != cookie.account_id:
                return None
            name = await session.scalar(select(Account.name).where(Account.id == account_id))
            return Operator(LINK_SESSION, account_id, name)
    return None


def int_param(value: str | None, default: int, low: int, high: int) -> int:
    """A number from the query string, kept within [low, high]; `default` when it is none."""
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return max(low, min(high, number))


def row_id(value: str) -> int | None:
    """A row id from the path (digits, within a bigint), or None."""
    if not value.isdigit():
        return None
    number = int(value)
    return number if 0 < number < 2**63 else None


def conversation_key(channel: str, conversation_id: str) -> tuple[Channel, int] | None:
    """(channel, id) of a conversation's path, or None for one no conversation can have."""
    number = row_id(conversation_id)
    if channel not in display.CHANNEL_NAMES or number is None:
        return None
    return Channel(channel), number


def uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


async def get_visit(request: Request) -> Visit:
    i18n.use_language(request)
    state = app_state(request)
    cookie = load_session(request, state.settings)
    request.state.dashboard_cookie = cookie
    operator = await _operator(state, cookie) if cookie.logged_in else None
    if cookie.logged_in and operator is None:
        cookie.log_out()
    return Visit(request, state, cookie, operator)


async def get_operator_visit(visit: Annotated[Visit, Depends(get_visit)]) -> Visit:
    if visit.operator is None:
        raise LoginRequired
    if visit.request.query_params.get("fragment") is None:
        async with visit.db() as session:
            visit.alerts = await alerts(session, visit.operator.account_id)
    return visit


async def get_posted_form(
    request: Request, visit: Annotated[Visit, Depends(get_visit)]
) -> FormData:
    """The posted form, once its CSRF token (field or htmx header) matches the session's."""
    form = parse_form(await read_body(request), request.headers.get("content-type"))
    if not visit.cookie.valid_csrf(request.headers.get(CSRF_HEADER) or first(form, CSRF_FIELD)):
        raise CsrfRejected
    return form


# A broadcast's recipient list: 10,000 rows with their variables fit.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


async def get_posted_upload(
    request: Request, visit: Annotated[Visit, Depends(get_visit)]
) -> Upload:
    """A posted form with a file (multipart), once its CSRF token matches the session's."""
    upload = await parse_upload(
        await read_body(request, MAX_UPLOAD_BYTES), request.headers, MAX_UPLOAD_BYTES
    )
    token = request.headers.get(CSRF_HEADER) or first(upload.form, CSRF_FIELD)
    if not visit.cookie.valid_csrf(token):
        raise CsrfRejected
    return upload


AnyVisit = Annotated[Visit, Depends(get_visit)]
OperatorVisit = Annotated[Visit, Depends(get_operator_visit)]
PostedForm = Annotated[FormData, Depends(get_posted_form)]
PostedUpload = Annotated[Upload, Depends(get_posted_upload)]


# -- responses -------------------------------------------------------------------------------------


def _finish(visit: Visit | None, request: Request, response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    cookie = visit.cookie if visit else getattr(request.state, "dashboard_cookie", None)
    if cookie is not None:
        save_session(response, request, app_state(request).settings, cookie)
    return response


def _here(request: Request) -> str:
    here = app_path(request)
    return f"{here}?{request.url.query}" if request.url.query else here


def js_words() -> dict[str, str]:
    """What app.js writes itself (chart legends, the reply window's countdown, announcements),
    in the request's language: the page hands them over in <body data-words> (and the reply
    window's closing sentence in its own data-closed-text)."""
    return {
        "incoming": _("Incoming"),
        "outgoing": _("Outgoing"),
        "ai_replies": _("AI replies"),
        "conversations": _("Conversations"),
        "seconds": _("Seconds"),
        "under_1_min": _("under 1 min"),
        "day_one": i18n.ngettext("%(num)s day", "%(num)s days", 1),
        "day_many": i18n.ngettext("%(num)s day", "%(num)s days", 2),
        "new_one": i18n.ngettext("%(num)s new message", "%(num)s new messages", 1),
        "new_many": i18n.ngettext("%(num)s new message", "%(num)s new messages", 2),
    }


def _context(visit: Visit, page: str, **values: Any) -> dict[str, Any]:
    root = visit.root
    return {
        "lang": i18n.current_language(),
        "ui_languages": i18n.LANGUAGE_NAMES,
        "js_words": js_words,
        "root": root,
        "asset": lambda name: f"{root}/static/{name}?v={ASSET_VERSION}",
        "csrf": visit.cookie.csrf,
        "operator": visit.operator,
        "page": page,
        # Inside the app (forms post it back as `next`, which redirect() prefixes).
        "path": app_path(visit.request),
        # Where the language switch comes back to: this page, with its query.
        "here": _here(visit.request),
        "display": display,
        "alerts": visit.alerts,
        **values,
    }


def render(
    visit: Visit, template: str, page: str, status_code: int = 200, **values: Any
) -> Response:
    response = templates.TemplateResponse(
        visit.request, template, _context(visit, page, **values), status_code=status_code
    )
    return _finish(visit, visit.request, response)


def _fragment(
    visit: Visit, template: str, live_id: str, every: float, poll_url: str, values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    context = _context(visit, "", **values)
    inner = templates.get_template(template).render(context)
    version = hashlib.sha256(inner.encode()).hexdigest()[:16]
    part = {"id": live_id, "every": every, "url": poll_url, "inner": inner, "version": version}
    return part, context


def embed(
    visit: Visit, template: str, *, live_id: str, every: float, poll_url: str, **values: Any
) -> dict[str, Any]:
    """A polled fragment for a page to include (`_live.html` with `live` set to this)."""
    return _fragment(visit, template, live_id, every, poll_url, values)[0]


def live(
    visit: Visit, template: str, *, live_id: str, every: float, poll_url: str, **values: Any
) -> Response:
    """The fragment a page polls; 204 (htmx keeps what it shows) when nothing changed."""
    part, context = _fragment(visit, template, live_id, every, poll_url, values)
    if visit.request.query_params.get("v") == part["version"]:
        return _finish(visit, visit.request, Response(status_code=204))
    html = templates.get_template("_live.html").render({**context, "live": part})
    return _finish(visit, visit.request, HTMLResponse(html))


def send_file(visit: Visit, response: Response) -> Response:
    """A file (a media item): the security headers it does not set itself, as it brings its
    own policy and caching."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    save_session(response, visit.request, visit.state.settings, visit.cookie)
    return response


def redirect(visit: Visit, path: str) -> Response:
    return _finish(visit, visit.request, RedirectResponse(visit.root + path, status_code=303))


def safe_next(value: str | None) -> str:
    """Only paths of this site (not //host or /\\host) are followed after logging in."""
    if (
        value
        and value.startswith("/")
        and not value.startswith(("//", "/\\"))
        # Browsers drop tabs and newlines from URLs: "/\t/host" would become "//host".
        and not any(ord(character) < 0x20 or character == "\x7f" for character in value)
    ):
        return value
    return "/"


async def login_required(request: Request, _exc: Exception) -> Response:
    root = mount_prefix(request)
    # After logging in, back to the page, not to the fragment it was polling.
    url = httpx.URL(request.headers.get("hx-current-url") or str(request.url))
    target = url.path.removeprefix(root) or "/"
    if url.query:
        target += "?" + url.query.decode()
    login = f"{root}/login?{httpx.QueryParams({'next': target})}"
    if request.headers.get("hx-request"):
        # htmx follows this with a full page load instead of swapping the login page in.
        return _finish(None, request, Response(status_code=204, headers={"HX-Redirect": login}))
    return _finish(None, request, RedirectResponse(login, status_code=303))


async def csrf_rejected(request: Request, _exc: Exception) -> Response:
    i18n.use_language(request)
    visit = Visit(request, app_state(request), request.state.dashboard_cookie, None)
    return error_page(
        visit,
        403,
        _("Form expired"),
        _(
            "This form is out of date or did not come from this dashboard. "
            "Go back, reload the page and try again."
        ),
    )


def error_page(visit: Visit, status_code: int, title: str, message: str) -> Response:
    return render(visit, "error.html", "", status_code=status_code, title=title, message=message)


# What `not_found` says of each thing a path can name.
NOT_FOUND = {
    "such conversation": N_(
        "There is no such conversation here, or it belongs to another account."
    ),
    "such broadcast": N_("There is no such broadcast here, or it belongs to another account."),
    "such account": N_("There is no such account here, or it belongs to another account."),
    "account switcher": N_("There is no account switcher here, or it belongs to another account."),
    "such media item": N_("There is no such media item here, or it belongs to another account."),
    "such channel": N_("There is no such channel here, or it belongs to another account."),
}


def not_found(visit: Visit, what: str) -> Response:
    message = NOT_FOUND.get(what)
    text = (
        _(message)
        if message
        else _("There is no %(what)s here, or it belongs to another account.", what=what)
    )
    return error_page(visit, 404, _("Not found"), text)
