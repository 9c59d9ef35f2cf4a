"""Operations endpoints over real HTTP: /healthz, /readyz, /metrics, and the OpenAPI document."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from platica import db
from platica.app import create_app
from platica.config import Settings
from tests.conftest import LiveServer, make_settings
from tests.factories import inbound_form, post_signed
from tests.fakes import FakeTwilio
from tests.throwaway import drop_database, throwaway_database

LiveServerFactory = Callable[[Settings], LiveServer]
DEADLINE_SECONDS = 10.0


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def server(database_url: str, live_server: LiveServerFactory, twilio: FakeTwilio) -> LiveServer:
    # Replies (to the webhook the metrics test posts) go to the fake Twilio, never the real one.
    return live_server(make_settings(database_url, TWILIO_API_BASE_URL=twilio.url))


def webhooks_total(client: httpx.Client, server: LiveServer, endpoint: str, outcome: str) -> float:
    response = client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "platica_webhooks_total" and sample.labels == {
                "endpoint": endpoint,
                "outcome": outcome,
            }:
                return sample.value
    return 0.0


class TestHealthz:
    def test_alive(self, server: LiveServer, client: httpx.Client) -> None:
        response = client.get(f"{server.url}/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestReadyz:
    def test_database_up(self, server: LiveServer, client: httpx.Client) -> None:
        response = client.get(f"{server.url}/readyz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok", "database": "ok"}

    @pytest.mark.postgres
    def test_database_gone(
        self,
        postgres_url: str,
        live_server: LiveServerFactory,
        twilio: FakeTwilio,
        client: httpx.Client,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # An API-only server (`platica serve --no-worker`): with its database dropped, nothing
        # in it waits on the database while shutting down.
        monkeypatch.setattr(
            "tests.conftest.create_app", functools.partial(create_app, worker=False)
        )
        with throwaway_database(postgres_url) as url:
            db.upgrade(url)
            server = live_server(make_settings(url, TWILIO_API_BASE_URL=twilio.url))
            assert client.get(f"{server.url}/readyz").status_code == 200

            drop_database(postgres_url, url.rsplit("/", 1)[1])

            deadline = time.monotonic() + DEADLINE_SECONDS
            response = client.get(f"{server.url}/readyz")
            while response.status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
                response = client.get(f"{server.url}/readyz")
            assert response.status_code == 503
            assert response.json() == {"status": "unavailable", "database": "unreachable"}
            assert client.get(f"{server.url}/healthz").status_code == 200


class TestMetrics:
    def test_prometheus_text(self, server: LiveServer, client: httpx.Client) -> None:
        response = client.get(f"{server.url}/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "# TYPE platica_webhooks_total counter" in response.text

    def test_webhook_counted(self, server: LiveServer, client: httpx.Client) -> None:
        before = webhooks_total(client, server, "sms", "accepted")

        response = post_signed(client, server.url, "/webhook/sms", inbound_form("sms"))

        assert response.status_code == 200
        assert webhooks_total(client, server, "sms", "accepted") == before + 1

    def test_rejected_webhook_counted(self, server: LiveServer, client: httpx.Client) -> None:
        before = webhooks_total(client, server, "sms", "rejected")

        response = client.post(f"{server.url}/webhook/sms", data=inbound_form("sms"))

        assert response.status_code == 403
        assert webhooks_total(client, server, "sms", "rejected") == before + 1


class TestOpenApi:
    def test_lists_the_webhooks(self, server: LiveServer, client: httpx.Client) -> None:
        response = client.get(f"{server.url}/openapi.json")

        assert response.status_code == 200
        paths = response.json()["paths"]
        for path in ("/webhook/sms", "/webhook/whatsapp", "/webhook/status"):
            assert "post" in paths[path], path
        for path in ("/healthz", "/readyz", "/metrics"):
            assert "get" in paths[path], path

    def test_docs_page(self, server: LiveServer, client: httpx.Client) -> None:
        response = client.get(f"{server.url}/docs")

        assert response.status_code == 200
        assert "/openapi.json" in response.text
