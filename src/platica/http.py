"""HTTP plumbing shared by the webhook and the dashboard: reading a request body within a limit,
decoding a form, and where the app is mounted."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from platica.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 64 * 1024

# A decoded form: every field name with its values, in the order received.
FormData = dict[str, list[str]]
# The most fields a form with a file may have.
MAX_FILE_FIELDS = 1000


def mount_prefix(request: Request) -> str:
    """Where the app is mounted: "" at the top, "/platica" when another app mounts it there (or
    a proxy serves it there with uvicorn's --root-path): the ASGI root_path."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def app_path(request: Request) -> str:
    """The request's path inside the app, without the mount prefix (Starlette keeps it in
    `request.url.path`)."""
    path = request.url.path
    prefix = mount_prefix(request)
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix) :] or "/"
    return path


@dataclass
class Upload:
    """A multipart/form-data body: its text fields, and its files' bytes by field name."""

    form: FormData = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing more than `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"the body is over {limit // 1024} KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over {limit // 1024} KiB")
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


async def parse_upload(body: bytes, headers: Headers, limit: int) -> Upload:
    """Decode a multipart/form-data body (a form with one file), or an urlencoded one (no
    file), with Starlette's parser (python-multipart): the body was already size-checked by
    read_body, and each part is held to `limit` bytes."""
    content_type = headers.get("content-type")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        return Upload(parse_form(body, content_type))
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"expected Content-Type multipart/form-data, got {media_type or 'none'}"
        )

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        headers, stream(), max_files=1, max_fields=MAX_FILE_FIELDS, max_part_size=limit
    )
    try:
        parsed = await parser.parse()
    except MultiPartException as error:
        raise BadRequest(f"the form could not be parsed: {error.message}") from None
    upload = Upload()
    try:
        for name, value in parsed.multi_items():
            if isinstance(value, UploadFile):
                upload.files[name] = await value.read()
                continue
            if "\x00" in name or "\x00" in value:
                raise BadRequest(f"field {name!r} contains a NUL character")
            upload.form.setdefault(name, []).append(value)
    finally:
        await parsed.close()
    return upload
