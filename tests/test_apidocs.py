"""/docs is served from the vendored Swagger UI (no CDN): it works offline."""

from __future__ import annotations

import re

import httpx

from tests.conftest import make_settings

# Where the page may send the browser: every src/href and the schema's URL.
REFERENCE = re.compile(r"""(?:href|src)="([^"]*)"|url: '([^']*)'""")


def references(html: str) -> list[str]:
    return [next(part for part in match if part) for match in REFERENCE.findall(html)]


class TestDocs:
    def test_loads_nothing_from_another_host(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url), worker=False)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            page = client.get("/docs")
            assert page.status_code == 200
            found = references(page.text)
            assert len(found) == 4, found  # the script, the stylesheet, the icon, the schema
            assert not re.search(r"(?:https?:)?//", page.text), "an absolute URL in /docs"
            for url in found:
                assert url.startswith("/"), url
                response = client.get(url)
                assert response.status_code == 200, url
                assert response.content, url
            bundle = client.get(next(url for url in found if "swagger-ui-bundle.js" in url))

        assert "SwaggerUIBundle" in bundle.text
        assert "validatorUrl" in page.text

    def test_redoc_is_off(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url), worker=False)

        assert httpx.get(server.url + "/redoc", timeout=30).status_code == 404
