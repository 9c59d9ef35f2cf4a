"""Errors Plática reports to its callers, and the handlers that render them as JSON.

    PlaticaError(message, status_code)      rendered as {"error": {"code", "message"}}
    ├── BadRequest                   400    malformed input
    ├── InvalidSignature             403    X-Twilio-Signature missing or wrong
    ├── NotFound                     404    no such object, or not this account's
    ├── PayloadTooLarge              413    request body over the limit
    └── UnsupportedMediaType         415    not a form post

Validation errors of FastAPI request models are rendered in the same shape, with status 422.

    RetryableError                          a transient failure of an outside service (timeout,
                                            429, 5xx): the job backs off and tries again
    └── RateLimited                         the LLM provider asks us to slow down for
                                            `retry_after` seconds (replies/generator.py)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


class InvalidSignature(PlaticaError):
    status_code = 403
    code = "invalid_signature"


class NotFound(PlaticaError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(PlaticaError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(PlaticaError):
    status_code = 415
    code = "unsupported_media_type"


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlaticaError, _platica_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
