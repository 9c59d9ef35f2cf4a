"""The dashboard over plain HTTP, without a browser: a cookie jar, and the CSRF token its pages
carry (for the tests of what no browser needs to show: sessions, limits, the simulator's
plumbing)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import LiveServer


class DashboardClient:
    """One operator's browser, as far as HTTP goes (from `local_address` when given). It asks
    for English pages (`language`), as the tests' assertions are in English; test_i18n.py
    checks the Spanish ones."""

    def __init__(
        self, server: LiveServer, local_address: str | None = None, language: str | None = "en"
    ) -> None:
        self.server = server
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        headers = {"Accept-Language": language} if language else None
        self.http = httpx.Client(
            base_url=server.url, timeout=30, transport=transport, headers=headers
        )

    def csrf(self, path: str = "/login") -> str:
        """The CSRF token of the form on the page at `path`."""
        page = self.http.get(path)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None, page.text
        return found[1]

    def log_in(self, token: str) -> httpx.Response:
        return self.http.post("/login", data={"token": token, "csrf_token": self.csrf()})

    def log_out(self) -> httpx.Response:
        return self.http.post("/logout", data={"csrf_token": self.csrf("/")})

    def post_form(self, path: str, form_page: str, data: dict[str, Any]) -> httpx.Response:
        """POST `data` to `path` with the CSRF token of the page at `form_page`."""
        return self.http.post(path, data={**data, "csrf_token": self.csrf(form_page)})

    def close(self) -> None:
        self.http.close()
