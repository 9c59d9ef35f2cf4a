"""Who is calling the API: an account's API key, the admin token, or a Supabase user's JWT."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from platica.accounts import API_KEY_PREFIX, hash_api_key
from platica.deps import AppState, StateDep
from platica.errors import BadRequest
from platica.models import Account, ApiKey, utcnow
from platica.supabase import KeysUnavailable, TokenRefused, verify_user_token

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `account_id` is None for the admin, who sees every account."""

    account_id: uuid.UUID | None
    kind: str  # "api_key", "admin" or "supabase"

    @property
    def is_admin(self) -> bool:
        return self.account_id is None


def _refuse(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers=UNAUTHORIZED)


class Unverifiable(HTTPException):
    """A 401 for a credential that could not be checked (the Supabase project's keys could not
    be fetched): Plática's trouble, not a wrong guess, so not counted as a failed login."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=401, detail=message, headers=UNAUTHORIZED)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _refuse("send Authorization: Bearer <API key, admin token or Supabase JWT>")
    return token.strip()


async def _api_key_account(session: AsyncSession, token: str) -> uuid.UUID | None:
    key = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(token), ApiKey.revoked_at.is_(None))
    )
    if key is None:
        return None
    now = utcnow()
    # Touch at most once a minute: every request writing a row would cost more than it tells.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return key.account_id


async def _supabase_account(state: AppState, session: AsyncSession, token: str) -> uuid.UUID:
    secret = state.settings.SUPABASE_JWT_SECRET
    try:
        user_id = await verify_user_token(
            token,
            keys=state.supabase_keys,
            secret=secret.get_secret_value() if secret is not None else None,
        )
    except KeysUnavailable as unavailable:
        raise Unverifiable(str(unavailable)) from None
    except TokenRefused as refused:
        raise _refuse(str(refused)) from None
    account_id = await session.scalar(select(Account.id).where(Account.auth_user_id == user_id))
    if account_id is None:
        raise _refuse(
            "this Supabase user has no Plática account "
            "(link it: platica accounts link-user ACCOUNT USER_ID)"
        )
    return account_id


async def authenticate(state: AppState, session: AsyncSession, token: str) -> Principal:
    settings = state.settings
    admin = settings.PLATICA_ADMIN_TOKEN
    if admin is not None and hmac.compare_digest(token.encode(), admin.get_secret_value().encode()):
        return Principal(account_id=None, kind="admin")
    if token.startswith(API_KEY_PREFIX):
        account_id = await _api_key_account(session, token)
        if account_id is None:
            raise _refuse("unknown or revoked API key")
        return Principal(account_id=account_id, kind="api_key")
    supabase = settings.SUPABASE_URL is not None or settings.SUPABASE_JWT_SECRET is not None
    if supabase and token.count(".") == 2:
        return Principal(await _supabase_account(state, session, token), kind="supabase")
    raise _refuse("invalid credentials")


def client_address(request: Request) -> str:
    """The caller's address, for limits per address (behind a proxy: what uvicorn's
    proxy_headers made of X-Forwarded-For, from the proxies it trusts)."""
    return request.client.host if request.client else "unknown"


def scope_session(session: AsyncSession, account_id: uuid.UUID | None) -> None:
    """On PostgreSQL, tell row-level security whose rows each transaction of `session` may see.

    The setting is transaction-local, so it is set again at every BEGIN and never outlives the
    request on a pooled connection.
    """
    if account_id is None or session.get_bind().dialect.name != "postgresql":
        return

    def _on_begin(
        _session: Session, _transaction: SessionTransaction, connection: Connection
    ) -> None:
        connection.execute(
            text("SELECT set_config('platica.account_id', :account, true)"),
            {"account": str(account_id)},
        )

    event.listen(session.sync_session, "after_begin", _on_begin)


@dataclass
class Caller:
    principal: Principal
    session: AsyncSession

    @property
    def account_id(self) -> uuid.UUID | None:
        """The account every query is restricted to; None for the admin's view of all."""
        return self.principal.account_id


def _credential(principal: Principal, token: str) -> str:
    """What the API's rate limit counts calls by: the key or token; a Supabase user's account
    (their tokens change every hour)."""
    if principal.kind == "supabase":
        return f"supabase:{principal.account_id}"
    return f"{principal.kind}:{hash_api_key(token)}"


# Declares the scheme in OpenAPI (/docs gets its "Authorize" button); _bearer() does the checking,
# so that every failure gets the same 401 and message.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An account's API key (plk_…), the admin token, or a Supabase user's JWT.",
)


async def get_caller(
    request: Request,
    state: StateDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    account_id: Annotated[
        uuid.UUID | None,
        Query(description="Admin token only: act on this account (default: all accounts)."),
    ] = None,
) -> AsyncIterator[Caller]:
    """The authenticated caller, with a session scoped to its account (routes commit writes)."""
    address = client_address(request)
    wait = state.throttle.login_retry_after(address)
    if wait is not None:
        # Before the credential is even looked at: a right guess must not get through either.
        raise HTTPException(
            status_code=429,
            detail=f"too many failed authentications from your address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    token = _bearer(request)
    async with state.sessionmaker() as session:
        try:
            principal = await authenticate(state, session, token)
        except Unverifiable:
            raise
        except HTTPException:
            state.throttle.count_failed_login(address)
            raise
        await session.commit()  # the key's last use
        retry_after = state.limits.api(_credential(principal, token))
        if retry_after is not None:
            raise HTTPException(
                status_code=429,
                detail=f"too many requests (at most {state.limits.api_limit} for one "
                f"credential); try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        if principal.is_admin and account_id is not None:
            principal = Principal(account_id=account_id, kind="admin")
        scope_session(session, principal.account_id)
        yield Caller(principal, session)


CallerDep = Annotated[Caller, Depends(get_caller)]


def own_account(caller: Caller) -> uuid.UUID:
    """The account a change applies to: the caller's own; the admin must name it."""
    if caller.account_id is None:
        raise BadRequest("the admin token must name the account: add ?account_id=<uuid>")
    return caller.account_id
