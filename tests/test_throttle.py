"""Limits on callers who have not proven who they are (item 13 of issue 12): failed logins to
the dashboard and failed API credentials, per client address, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from limits import parse as parse_limit

from platica.throttle import FAILED_LOGINS
from tests.conftest import LiveServer, make_settings
from tests.dashboard.client import DashboardClient
from tests.records import default_account_key

ADMIN_TOKEN = "admin-throttle-0f3e5d7c9b1a2b3c"
ATTEMPTS = parse_limit(FAILED_LOGINS).amount
# Another client address: Linux answers on the whole of 127.0.0.0/8.
OTHER_ADDRESS = "127.0.0.2"


@pytest.fixture
def server(database_url, live_server) -> LiveServer:
    started: LiveServer = live_server(make_settings(database_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN))
    return started


@pytest.fixture
def api_key(server, database_url) -> str:
    return default_account_key(database_url)[1]


@pytest.fixture
def dashboard(server) -> Iterator[DashboardClient]:
    client = DashboardClient(server)
    yield client
    client.close()


class TestDashboardLogin:
    def test_wrong_logins_from_one_address_get_429_with_retry_after(self, server, dashboard):
        statuses = [dashboard.log_in(f"plk_guess-{i}").status_code for i in range(ATTEMPTS)]
        assert statuses == [401] * ATTEMPTS

        refused = dashboard.log_in("plk_one-more-guess")

        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Too many failed logins" in refused.text
        assert 'name="token"' in refused.text  # the login page, re-rendered
        # Even the right token waits: otherwise guessing would go on, 10 a minute at a time.
        assert dashboard.log_in(ADMIN_TOKEN).status_code == 429

    def test_another_address_still_logs_in(self, server, dashboard):
        for i in range(ATTEMPTS + 1):
            dashboard.log_in(f"plk_guess-{i}")
        elsewhere = DashboardClient(server, local_address=OTHER_ADDRESS)
        try:
            response = elsewhere.log_in(ADMIN_TOKEN)
        finally:
            elsewhere.close()
        assert response.status_code == 303

    def test_successful_logins_are_not_counted(self, server):
        for _ in range(ATTEMPTS + 2):
            fresh = DashboardClient(server)  # logged out: a new cookie jar
            try:
                assert fresh.log_in(ADMIN_TOKEN).status_code == 303
            finally:
                fresh.close()


class TestApiCredentials:
    def test_wrong_credentials_from_one_address_get_429_with_retry_after(self, server, api_key):
        url = server.url + "/api/sms/stats"
        with httpx.Client(timeout=30) as client:
            statuses = [
                client.get(url, headers={"Authorization": f"Bearer plk_guess-{i}"}).status_code
                for i in range(ATTEMPTS)
            ]
            refused = client.get(url, headers={"Authorization": "Bearer plk_one-more"})
            right_key = client.get(url, headers={"Authorization": f"Bearer {api_key}"})
        transport = httpx.HTTPTransport(local_address=OTHER_ADDRESS)
        with httpx.Client(timeout=30, transport=transport) as elsewhere:
            other = elsewhere.get(url, headers={"Authorization": f"Bearer {api_key}"})

        assert statuses == [401] * ATTEMPTS
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "failed" in refused.json()["error"]["message"]
        assert right_key.status_code == 429
        assert other.status_code == 200

    def test_a_missing_header_is_refused_without_counting(self, server, api_key):
        url = server.url + "/api/sms/stats"
        with httpx.Client(timeout=30) as client:
            statuses = [client.get(url).status_code for _ in range(ATTEMPTS + 2)]
            keyed = client.get(url, headers={"Authorization": f"Bearer {api_key}"})
        assert statuses == [401] * (ATTEMPTS + 2)
        assert keyed.status_code == 200
