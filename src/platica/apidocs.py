"""GET /docs: the API's Swagger UI, from the vendored copy the dashboard serves (no CDN), so it
works offline; its URLs carry the mount prefix."""

from __future__ import annotations

import hashlib

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from platica.dashboard.web import STATIC
from platica.http import mount_prefix

SWAGGER_FILES = ("vendor/swagger-ui-bundle.js", "vendor/swagger-ui.css")
# Changes with the vendored files, so browsers never run a stale copy after an update.
SWAGGER_VERSION = hashlib.sha256(
    b"".join((STATIC / name).read_bytes() for name in SWAGGER_FILES)
).hexdigest()[:10]


def install(app: FastAPI) -> None:
    """Serve /docs from `app` (created with docs_url=None and redoc_url=None: ReDoc would need
    another bundle from a CDN)."""

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """The interactive API documentation."""
        root = mount_prefix(request)
        static = f"{root}/static"
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} · API",
            swagger_js_url=f"{static}/{SWAGGER_FILES[0]}?v={SWAGGER_VERSION}",
            swagger_css_url=f"{static}/{SWAGGER_FILES[1]}?v={SWAGGER_VERSION}",
            swagger_favicon_url=f"{static}/favicon.svg",
            # No badge asking validator.swagger.io about the schema.
            swagger_ui_parameters={"validatorUrl": None},
        )
