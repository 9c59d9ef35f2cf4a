"""HTTP plumbing shared by the webhook and the dashboard: reading a request body within a limit,
and decoding a form."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from platica.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 64 * 1024

# A decoded form: every field name with its values, in the order received.
FormData = dict[str, list[str]]


async def read_body(request: Request) -> bytes:
    """The request body, refusing more than MAX_BODY_BYTES without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(body: bytes, content_type: str | None) -> FormData:
    """Decode an application/x-www-form-urlencoded body, refusing anything else clearly."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            f"expected Content-Type application/x-www-form-urlencoded, got {media_type or 'none'}"
        )
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=1000)
    except UnicodeDecodeError:
        raise BadRequest("the form is not valid UTF-8") from None
    except ValueError as error:
        raise BadRequest(f"the form could not be parsed: {error}") from None
    form: FormData = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"field {name!r} contains a NUL character")
        form.setdefault(name, []).append(value)
    return form


def first(form: FormData, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None
