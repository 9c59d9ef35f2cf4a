"""Logging in and out of the dashboard, the admin's choice of account, and the language."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

from platica import db
from platica.accounts import hash_api_key
from platica.api.auth import Principal, authenticate, client_address
from platica.dashboard import i18n
from platica.dashboard.i18n import _
from platica.dashboard.session import (
    LINK_SESSION,
    LinkRefused,
    admin_fingerprint,
    close_session,
    open_session,
    redeem_login_link,
)
from platica.dashboard.web import (
    AnyVisit,
    OperatorVisit,
    PostedForm,
    error_page,
    not_found,
    redirect,
    render,
    safe_next,
    uuid_or_none,
)
from platica.http import first
from platica.logging import get_logger

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)


@router.get("/login")
async def login_page(visit: AnyVisit) -> Response:
    """The login form."""
    next_path = safe_next(visit.request.query_params.get("next"))
    if visit.operator is not None:
        return redirect(visit, next_path)
    return render(visit, "login.html", "login", next=next_path, error=None)


@router.post("/login")
async def log_in(visit: AnyVisit, form: PostedForm) -> Response:
    """Log in with an account's API key or the admin token."""
    token = (first(form, "token") or "").strip()
    next_path = safe_next(first(form, "next"))
    address = client_address(visit.request)
    retry_after = visit.state.throttle.login_retry_after(address)
    if retry_after is not None:
        # Checked before the token, right or wrong: otherwise guessing would simply go on.
        log.warning("dashboard.login_throttled", retry_after=retry_after)
        error = _(
            "Too many failed logins from your address. Try again in %(seconds)s seconds.",
            seconds=retry_after,
        )
        response = render(
            visit, "login.html", "login", status_code=429, next=next_path, error=error
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    principal: Principal | None = None
    error = _("Enter an API key or the admin token.")
    if token:
        async with visit.state.sessionmaker() as session:
            try:
                principal = await authenticate(visit.state, session, token)
            except HTTPException:
                principal = None
                visit.state.throttle.count_failed_login(address)
            await session.commit()  # the key's last use
        error = _("That is not a valid API key or admin token.")
    if principal is None or principal.kind == "supabase":
        if principal is not None:
            error = _("Log in with an account's API key or the admin token.")
        log.info("dashboard.login_failed")
        return render(visit, "login.html", "login", status_code=401, next=next_path, error=error)
    if principal.is_admin:
        credential = admin_fingerprint(visit.state.settings) or ""
    else:
        credential = hash_api_key(token)
    async with db.session(visit.state.sessionmaker) as session:
        sid = await open_session(session, principal.kind, principal.account_id)
    account = str(principal.account_id) if principal.account_id else None
    visit.cookie.log_in(principal.kind, credential, account, sid)
    log.info("dashboard.login", kind=principal.kind, account_id=account)
    return redirect(visit, next_path)


@router.get("/login/link/{token}")
async def log_in_with_link(visit: AnyVisit, token: str) -> Response:
    """Log in with a one-time link (the first `platica serve` prints one): once, then gone."""
    try:
        async with db.session(visit.state.sessionmaker) as session:
            account_id = await redeem_login_link(session, token)
            sid = await open_session(session, LINK_SESSION, account_id)
    except LinkRefused as refused:
        visit.state.throttle.count_failed_login(client_address(visit.request))
        log.info("dashboard.login_link_refused")
        return render(visit, "login.html", "login", status_code=410, next="/", error=str(refused))
    visit.cookie.log_in(LINK_SESSION, "", str(account_id), sid)
    log.info("dashboard.login", kind=LINK_SESSION, account_id=str(account_id))
    return redirect(visit, "/")


@router.post("/logout")
async def log_out(visit: AnyVisit, _form: PostedForm) -> Response:
    """End the session, on the server too: a copy of its cookie stops working."""
    if visit.cookie.sid:
        async with db.session(visit.state.sessionmaker) as session:
            await close_session(session, visit.cookie.sid)
    visit.cookie.log_out()
    return redirect(visit, "/login")


@router.post("/account")
async def switch_account(visit: OperatorVisit, form: PostedForm) -> Response:
    """Admin only: choose the account the pages show (empty: every account)."""
    operator = visit.me
    if not operator.is_admin:
        return not_found(visit, "account switcher")
    chosen = uuid_or_none(first(form, "account_id"))
    if chosen is not None and chosen not in dict(operator.accounts):
        return not_found(visit, "such account")
    visit.cookie.viewing = str(chosen) if chosen else None
    visit.cookie.changed = True
    return redirect(visit, safe_next(first(form, "next")))


@router.get("/language")
async def choose_language(visit: AnyVisit) -> Response:
    """Switch the dashboard's language (remembered in a cookie) and go back to the page."""
    language = visit.request.query_params.get("lang", "")
    if language not in i18n.LANGUAGES:
        return error_page(
            visit,
            400,
            _("Unknown language"),
            _(
                "There is no language %(language)r: choose one of %(choices)s.",
                language=language[:20],
                choices=", ".join(i18n.LANGUAGES),
            ),
        )
    i18n.set_language(language)
    response = redirect(visit, safe_next(visit.request.query_params.get("next")))
    i18n.remember_language(response, visit.request, language)
    return response
