"""The dashboard's session: a signed cookie saying who logged in, and the CSRF token of its forms.

The cookie never holds a credential. After an API key login it holds the key's account and the
key's SHA-256 hash (as stored in `api_keys`), so revoking the key ends the session at the next
request; after an admin login, an HMAC of the admin token, so changing PLATICA_ADMIN_TOKEN ends it.
It also holds a random session id, whose SHA-256 hash is a row of `dashboard_sessions`: every
request checks that the row is there, and logging out deletes it, so a copied cookie stops
working at once. A one-time login link (the first `platica serve` on an empty database prints
one for the default account) is a row of its own, of kind `login_link`, which redeeming it
deletes; the session it opens is of kind `link`, checked as the row of its session id. It is signed (itsdangerous, HMAC-SHA256), HttpOnly, SameSite=Lax, Secure over
https, and expires 12 hours after login (the row too).

The signing key is derived (HMAC) from the secrets the deployment already has: PLATICA_ADMIN_TOKEN,
TWILIO_AUTH_TOKEN and SUPABASE_JWT_SECRET, whichever are set. Every process of one deployment
derives the same key, and changing any of those secrets logs everyone out. With none of them set
(local mode) the key is random per process, so sessions end when the server restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from platica.config import Settings
from platica.dashboard.i18n import _
from platica.models import DashboardSession, utcnow

COOKIE_NAME = "platica_session"
MAX_AGE_SECONDS = 12 * 3600
# A one-time login link: its row's kind, how long it lasts, the kind of the session it opens.
LOGIN_LINK = "login_link"
LOGIN_LINK_SECONDS = 15 * 60
LINK_SESSION = "link"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SALT = "platica.dashboard.session"
_PROCESS_SECRET = secrets.token_bytes(32)


def signing_key(settings: Settings) -> bytes:
    """The cookie's signing key (see the module docstring)."""
    material = [
        secret.get_secret_value()
        for secret in (
            settings.PLATICA_ADMIN_TOKEN,
            settings.TWILIO_AUTH_TOKEN,
            settings.SUPABASE_JWT_SECRET,
        )
        if secret is not None
    ]
    if not material:
        return _PROCESS_SECRET
    return hmac.new(_SALT.encode(), "\x00".join(material).encode(), hashlib.sha256).digest()


def admin_fingerprint(settings: Settings) -> str | None:
    """What an admin session stores instead of the admin token."""
    if settings.PLATICA_ADMIN_TOKEN is None:
        return None
    token = settings.PLATICA_ADMIN_TOKEN.get_secret_value().encode()
    return hmac.new(signing_key(settings), b"admin:" + token, hashlib.sha256).hexdigest()


@dataclass
class CookieSession:
    """The cookie's content. `changed` sessions are written back with the response."""

    csrf: str
    kind: str | None = None  # "api_key", "admin" or "link" once logged in
    account_id: str | None = None  # api_key: the key's account
    credential: str | None = None  # api_key: the key's hash; admin: admin_fingerprint()
    viewing: str | None = None  # admin: the account chosen in the header (None: all)
    logged_in_at: float | None = None
    sid: str | None = None  # the session id; its hash is a row of dashboard_sessions
    changed: bool = False

    @classmethod
    def anonymous(cls) -> CookieSession:
        return cls(csrf=secrets.token_urlsafe(32), changed=True)

    @property
    def logged_in(self) -> bool:
        return self.kind is not None

    def log_in(self, kind: str, credential: str, account_id: str | None, sid: str) -> None:
        """Start a fresh session (a new CSRF token too: nothing from before the login carries
        over); `sid` from open_session()."""
        self.csrf = secrets.token_urlsafe(32)
        self.kind, self.credential, self.account_id = kind, credential, account_id
        self.viewing = None
        self.logged_in_at = time.time()
        self.sid = sid
        self.changed = True

    def log_out(self) -> None:
        fresh = CookieSession.anonymous()
        self.__dict__.update(fresh.__dict__)

    def valid_csrf(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(
            self.csrf.encode(), (submitted or "").encode()
        )

    def _payload(self) -> dict[str, Any]:
        return {
            "csrf": self.csrf,
            "kind": self.kind,
            "account_id": self.account_id,
            "credential": self.credential,
            "viewing": self.viewing,
            "logged_in_at": self.logged_in_at,
            "sid": self.sid,
        }


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_key(settings), salt=_SALT)


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def load(request: Request, settings: Settings) -> CookieSession:
    """The request's session; a new anonymous one when the cookie is missing, forged or expired."""
    raw = request.cookies.get(COOKIE_NAME)
    if not raw:
        return CookieSession.anonymous()
    try:
        data = _serializer(settings).loads(raw, max_age=MAX_AGE_SECONDS)
    except BadSignature:  # also SignatureExpired
        return CookieSession.anonymous()
    csrf = data.get("csrf") if isinstance(data, dict) else None
    if not isinstance(csrf, str) or len(csrf) < 32:
        return CookieSession.anonymous()
    logged_in_at = data.get("logged_in_at")
    session = CookieSession(
        csrf=csrf,
        kind=_optional_str(data, "kind"),
        account_id=_optional_str(data, "account_id"),
        credential=_optional_str(data, "credential"),
        viewing=_optional_str(data, "viewing"),
        logged_in_at=float(logged_in_at) if isinstance(logged_in_at, int | float) else None,
        sid=_optional_str(data, "sid"),
    )
    if session.kind is not None and (
        session.logged_in_at is None
        or time.time() - session.logged_in_at > MAX_AGE_SECONDS
        or not session.sid
    ):
        return CookieSession.anonymous()
    return session


# -- the server's side: dashboard_sessions ---------------------------------------------------------


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


async def open_session(db: AsyncSession, kind: str, account_id: uuid.UUID | None) -> str:
    """Store a new session (and forget expired ones); its id, for the cookie (flushes only)."""
    now = utcnow()
    await db.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
    sid = secrets.token_urlsafe(32)
    db.add(
        DashboardSession(
            id_hash=_hash(sid),
            account_id=account_id,
            kind=kind,
            created_at=now,
            expires_at=now + timedelta(seconds=MAX_AGE_SECONDS),
        )
    )
    await db.flush()
    return sid


async def session_open(db: AsyncSession, sid: str) -> bool:
    """Whether the session is still there: not logged out, not expired."""
    found = await db.scalar(
        select(DashboardSession.id_hash).where(
            DashboardSession.id_hash == _hash(sid),
            DashboardSession.expires_at > utcnow(),
            DashboardSession.kind != LOGIN_LINK,  # a link's token is not a session id
        )
    )
    return found is not None


async def link_session_account(db: AsyncSession, sid: str) -> uuid.UUID | None:
    """The account of an open session that a login link started (None: no such session)."""
    return await db.scalar(
        select(DashboardSession.account_id).where(
            DashboardSession.id_hash == _hash(sid),
            DashboardSession.kind == LINK_SESSION,
            DashboardSession.expires_at > utcnow(),
        )
    )


async def issue_login_link(db: AsyncSession, account_id: uuid.UUID) -> str:
    """A one-time login link's token for the account, valid LOGIN_LINK_SECONDS; only its hash
    is stored (flushes only)."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    db.add(
        DashboardSession(
            id_hash=_hash(token),
            account_id=account_id,
            kind=LOGIN_LINK,
            created_at=now,
            expires_at=now + timedelta(seconds=LOGIN_LINK_SECONDS),
        )
    )
    await db.flush()
    return token


class LinkRefused(Exception):
    """A login link that cannot log anyone in: the message says why."""


async def redeem_login_link(db: AsyncSession, token: str) -> uuid.UUID:
    """The account a login link logs into; the link is deleted, so a second use finds nothing
    (the DELETE decides: of two requests at once, one gets the row). LinkRefused otherwise."""
    row = (
        await db.execute(
            delete(DashboardSession)
            .where(DashboardSession.id_hash == _hash(token), DashboardSession.kind == LOGIN_LINK)
            .returning(DashboardSession.account_id, DashboardSession.expires_at)
        )
    ).first()
    if row is None:
        raise LinkRefused(
            _(
                "This login link was already used, or is not a valid link. "
                "Log in with an API key or the admin token."
            )
        )
    if row.expires_at <= utcnow() or row.account_id is None:
        minutes = LOGIN_LINK_SECONDS // 60
        raise LinkRefused(
            _(
                "This login link has expired (links last %(minutes)s minutes). "
                "Log in with an API key or the admin token.",
                minutes=minutes,
            )
        )
    account_id: uuid.UUID = row.account_id
    return account_id


async def close_session(db: AsyncSession, sid: str) -> None:
    """Log the session out on the server: its cookie, wherever it was copied, stops working."""
    await db.execute(delete(DashboardSession).where(DashboardSession.id_hash == _hash(sid)))


def save(response: Response, request: Request, settings: Settings, session: CookieSession) -> None:
    """Write the session into the response's cookie when it changed."""
    if not session.changed:
        return
    response.set_cookie(
        COOKIE_NAME,
        _serializer(settings).dumps(session._payload()),
        max_age=MAX_AGE_SECONDS if session.logged_in else None,
        path=request.scope.get("root_path") or "/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
