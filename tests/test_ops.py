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


METRICS_TOKEN = "metrics-7d1e0c9a4b2f8e6d"


class TestMetricsToken:
    """Item 17 of issue 12: with METRICS_TOKEN set, /metrics needs it as a bearer token."""

    @pytest.fixture
    def guarded(self, sqlite_url: str, live_server: LiveServerFactory) -> LiveServer:
        return live_server(make_settings(sqlite_url, METRICS_TOKEN=METRICS_TOKEN))

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="no-header"),
            pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, id="wrong"),
            pytest.param({"Authorization": f"Basic {METRICS_TOKEN}"}, id="not-bearer"),
        ],
    )
    def test_without_the_token_401(
        self, headers: dict[str, str], guarded: LiveServer, client: httpx.Client
    ) -> None:
        response = client.get(f"{guarded.url}/metrics", headers=headers)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
        assert "platica_" not in response.text

    def test_with_the_token(self, guarded: LiveServer, client: httpx.Client) -> None:
        response = client.get(
            f"{guarded.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )

        assert response.status_code == 200
        assert "platica_webhooks_total" in response.text

    def test_health_checks_stay_open(self, guarded: LiveServer, client: httpx.Client) -> None:
        assert client.get(f"{guarded.url}/healthz").status_code == 200
        assert client.get(f"{guarded.url}/readyz").status_code == 200

    def test_a_placeholder_is_refused(self) -> None:
        from platica.config import ConfigError, load_settings

        with pytest.raises(ConfigError, match=r"^Invalid configuration: METRICS_TOKEN: "):
            load_settings(METRICS_TOKEN="changeme")


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
