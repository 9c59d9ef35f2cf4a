"""Plática mounted inside another FastAPI app at /platica, served over real HTTP: started by the
outer app's lifespan (`platica.lifespan`), it answers signed webhooks, the API, the dashboard
and /docs, each URL it builds carrying the prefix; not wired, it answers 503 `not_started`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import platica
from platica.config import Settings
from tests.conftest import ThreadedServer, free_port, make_settings
from tests.factories import inbound_form, post_signed
from tests.records import default_account_key

PREFIX = "/platica"
ADMIN_TOKEN = "admin-9f3c1e7a5b2d4c6e8a0b1d3f"


class OuterServer(ThreadedServer):
    """An app of the operator's own, mounting Plática at PREFIX, served by uvicorn."""

    def __init__(self, settings: Settings, *, wired: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Where Twilio reaches Plática: the outer app's URL and the mount prefix.
        settings = settings.model_copy(update={"PUBLIC_BASE_URL": self.url + PREFIX})
        inner = platica.create_app(settings)
        outer = FastAPI(lifespan=platica.lifespan(inner)) if wired else FastAPI()

        @outer.get("/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

        outer.mount(PREFIX, inner)
        super().__init__(outer, self.port)


@pytest.fixture
def outer_server() -> Iterator[Callable[..., OuterServer]]:
    servers: list[OuterServer] = []

    def start(settings: Settings, **options: Any) -> OuterServer:
        server = OuterServer(settings, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def post_webhook(client: httpx.Client, url: str, signed_for: str) -> httpx.Response:
    """An inbound SMS (channels/forms.py's form) posted to `url`, signed over `signed_for`."""
    form = inbound_form(body="Hola, ¿tienen pan integral?")
    return post_signed(client, url, "", form, signed_url=signed_for)


class TestMounted:
    @pytest.fixture
    def server(self, database_url, outer_server):
        return outer_server(make_settings(database_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN))

    def test_answers_a_webhook_signed_for_the_prefixed_url(self, server, database):
        url = f"{server.url}{PREFIX}/webhook/sms"
        with httpx.Client(timeout=30) as client:
            response = post_webhook(client, url, url)

        assert response.status_code == 200, response.text
        assert "<Response" in response.text
        assert database.count("messages") >= 1

    def test_refuses_a_signature_over_the_url_without_the_prefix(self, server, database):
        with httpx.Client(timeout=30) as client:
            response = post_webhook(
                client, f"{server.url}{PREFIX}/webhook/sms", f"{server.url}/webhook/sms"
            )

        assert response.status_code == 403
        assert database.scalar("SELECT count(*) FROM messages") == 0

    def test_answers_the_api_with_an_api_key(self, server, database_url):
        _account, key = default_account_key(database_url)
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            response = client.get(f"{server.url}{PREFIX}/api/sms/conversations")
            unauthenticated = httpx.get(f"{server.url}{PREFIX}/api/sms/conversations")

        assert response.status_code == 200, response.text
        assert "items" in response.json()
        assert unauthenticated.status_code == 401

    def test_dashboard_login_page_links_carry_the_prefix(self, server):
        with httpx.Client(timeout=30) as client:
            home = client.get(f"{server.url}{PREFIX}/")
            assert home.status_code == 303
            assert home.headers["location"] == f"{PREFIX}/login?next=%2F"
            # The session cookie is the mounted app's, not the whole site's.
            assert f"Path={PREFIX}" in home.headers["set-cookie"]
            page = client.get(server.url + home.headers["location"])

        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action)="([^"#]*)"', page.text)
        assert links, page.text
        assert all(link.startswith(PREFIX + "/") for link in links), links
        assert f'action="{PREFIX}/login"' in page.text
        assets = [link for link in links if "/static/" in link]
        assert assets
        with httpx.Client(timeout=30) as client:
            for asset in assets:
                assert client.get(server.url + asset).status_code == 200, asset

    def test_logging_in_and_switching_account_stay_under_the_prefix(self, server):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            page = client.get(f"{PREFIX}/login", params={"next": "/stats"})
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert csrf, page.text
            logged_in = client.post(
                f"{PREFIX}/login",
                data={"csrf_token": csrf[1], "next": "/stats", "token": ADMIN_TOKEN},
            )
            assert logged_in.status_code == 303, logged_in.text
            assert logged_in.headers["location"] == f"{PREFIX}/stats"
            stats = client.get(logged_in.headers["location"])
            assert stats.status_code == 200
            # The account switcher posts back the page's path inside the app.
            assert 'name="next" value="/stats"' in stats.text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', stats.text)
            assert csrf
            switched = client.post(
                f"{PREFIX}/account", data={"csrf_token": csrf[1], "next": "/stats"}
            )

        assert switched.status_code == 303, switched.text
        assert switched.headers["location"] == f"{PREFIX}/stats"

    def test_docs_and_openapi_carry_the_prefix(self, server):
        with httpx.Client(timeout=30) as client:
            docs = client.get(f"{server.url}{PREFIX}/docs")
            schema = client.get(f"{server.url}{PREFIX}/openapi.json")

        assert docs.status_code == 200
        assert f"'{PREFIX}/openapi.json'" in docs.text
        assert schema.status_code == 200
        assert schema.json()["servers"] == [{"url": PREFIX}]
        assets = re.findall(r'(?:href|src)="([^"]*)"', docs.text)
        assert len(assets) == 3, assets
        with httpx.Client(timeout=30) as client:
            for asset in assets:
                assert asset.startswith(f"{PREFIX}/static/"), asset
                assert client.get(server.url + asset).status_code == 200, asset

    def test_the_outer_app_keeps_its_own_routes(self, server):
        assert httpx.get(f"{server.url}/hello", timeout=30).json() == {"hello": "world"}


class TestNotWired:
    def test_answers_503_saying_how_to_wire_it(self, sqlite_url, outer_server):
        server = outer_server(make_settings(sqlite_url), wired=False)

        with httpx.Client(timeout=30) as client:
            for path in ("/api/sms/conversations", "/webhook/sms", "/login"):
                response = client.request(
                    "POST" if "webhook" in path else "GET", f"{server.url}{PREFIX}{path}"
                )
                assert response.status_code == 503, path
                error = response.json()["error"]
                assert error["code"] == "not_started"
                assert "platica.lifespan(" in error["message"]


class TestLifespan:
    async def test_cannot_be_entered_twice(self, sqlite_url):
        inner = platica.create_app(make_settings(sqlite_url))
        wiring = platica.lifespan(inner)

        async with wiring(None):
            engine = inner.state.platica.engine
            with pytest.raises(RuntimeError, match="already running"):
                async with wiring(None):
                    pass
            # Still the one started first.
            assert inner.state.platica.engine is engine
        assert getattr(inner.state, "platica", None) is None
