"""Errors Plática reports to its callers, and the handlers that render them as JSON.

    PlaticaError(message, status_code)      rendered as {"error": {"code", "message"}}
    ├── BadRequest                   400    malformed input
    │   └── AmbiguousAccount                a name several accounts share (accounts.py)
    ├── Conflict                     409    valid, but not possible now
    │   ├── NumberTaken                     another account owns the number (accounts.py)
    │   ├── NumberKeptBySetting             a number the settings give the default account
    │   │                                   (TWILIO_PHONE_NUMBER…) cannot be moved or deleted
    │   ├── AccountNameTaken                another account has that name
    │   └── TwilioNotConfigured             templates cannot be synced without Twilio
    │                                       (outreach/content.py)
    ├── Unprocessable                422    well formed, but the content does not fit
    ├── InvalidSignature             403    X-Twilio-Signature missing or wrong
    ├── Forbidden                    403    authenticated, but not allowed (an account's key
    │                                       managing accounts: admin token only)
    ├── NotFound                     404    no such object, or not this account's
    │   ├── AccountNotFound          404    no account with that id (or name)
    │   └── MediaUnavailable         404    a media item with no bytes to serve: none kept,
    │                                       and Twilio's copy cannot be fetched
    ├── PayloadTooLarge              413    request body over the limit
    ├── UnsupportedMediaType         415    not a form post
    └── BadGateway                   502    an outside service failed us for now (Twilio's
        │                                   media, fetched for an operator): try again later
        ├── TwilioCredentialsRefused        Twilio answered 401/403 to a template sync
        └── TwilioUnavailable               Twilio's Content API unreachable, slow or failing

Validation errors of FastAPI request models are rendered in the same shape, with status 422;
a request body that does not arrive in time (app.BodyTimeout) with 408 `request_timeout`.
A database that cannot be reached (no connection within db.POOL_TIMEOUT_SECONDS, a connection
lost) is 503 `database_unavailable`, with Retry-After, rather than a bare 500. An app whose
lifespan never ran (mounted without `platica.lifespan`) answers 503 `not_started` (app.RequireStarted).

    RetryableError                          a transient failure of an outside service (timeout,
                                            429, 5xx): the job backs off and tries again
    └── RateLimited                         the LLM provider asks us to slow down for
                                            `retry_after` seconds (replies/generator.py)
"""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sqlalchemy_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from platica.logging import get_logger

log = get_logger(__name__)
# Seconds a caller is asked to wait before trying again while the database is unavailable.
DATABASE_RETRY_AFTER = 5


class PlaticaError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(PlaticaError):
    status_code = 400
    code = "bad_request"


class Conflict(PlaticaError):
    """The request is valid, but what it asks cannot be done now (a closed conversation, an
    opted-out contact, WhatsApp's 24-hour window)."""

    status_code = 409
    code = "conflict"


class AmbiguousAccount(BadRequest):
    code = "ambiguous_account"


class NumberTaken(Conflict):
    code = "number_taken"


class NumberKeptBySetting(Conflict):
    code = "number_kept_by_setting"


class AccountNameTaken(Conflict):
    code = "account_name_taken"


class Unprocessable(PlaticaError):
    """The request is well formed, but its content does not fit (a missing template variable)."""

    status_code = 422
    code = "unprocessable"


class InvalidSignature(PlaticaError):
    status_code = 403
    code = "invalid_signature"

    def __init__(self, message: str, *, signed_url: str | None = None) -> None:
        super().__init__(message)
        # The URL the signature was checked against: for the log and webhook_logs only, never
        # for the caller (an unauthenticated caller has no business learning PUBLIC_BASE_URL).
        self.signed_url = signed_url


class Forbidden(PlaticaError):
    status_code = 403
    code = "forbidden"


class NotFound(PlaticaError):
    status_code = 404
    code = "not_found"


class AccountNotFound(NotFound):
    code = "account_not_found"


class MediaUnavailable(NotFound):
    code = "media_unavailable"


class PayloadTooLarge(PlaticaError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(PlaticaError):
    status_code = 415
    code = "unsupported_media_type"


class BadGateway(PlaticaError):
    status_code = 502
    code = "bad_gateway"


class RetryableError(Exception):
    """A transient failure of an outside service; `ambiguous` when the request may have landed."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.ambiguous = ambiguous


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


async def _platica_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlaticaError)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        429: "rate_limited",
    }.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        # The first element says where (body, query, path, header); the rest names the field.
        where, *field = err["loc"] or ("body",)
        name = ".".join(str(part) for part in field) or str(where)
        problems.append({"field": name, "message": err["msg"]})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(
        error_body("validation_error", summary or "invalid request", fields=problems),
        status_code=422,
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached: 503 at once (a webhook must not wait out Twilio)."""
    if isinstance(exc, sqlalchemy_errors.OperationalError) and not isinstance(
        exc.orig, psycopg.OperationalError
    ):
        # SQLite's own OperationalError is a bug or a locked file, not an outage: a plain 500.
        log.error("request.failed", path=request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)
    log.warning(
        "database.unavailable", path=request.url.path, error=type(exc).__name__, detail=str(exc)
    )
    return JSONResponse(
        error_body("database_unavailable", "the database is unavailable; try again shortly"),
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def install_error_handlers(app: FastAPI) -> None:
    for unavailable in (
        psycopg.OperationalError,  # psycopg_pool.PoolTimeout, AdminShutdown, refused connections
        sqlalchemy_errors.OperationalError,
        sqlalchemy_errors.TimeoutError,  # no connection free in the engine's pool in time
    ):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(PlaticaError, _platica_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
