"""Dashboard sessions over plain HTTP (no browser): logging out ends a session on the server,
so a copied cookie stops working at once (item 17 of issue 12)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from platica.accounts import create_api_key
from platica.dashboard.session import COOKIE_NAME
from platica.models import utcnow
from tests.api.conftest import in_session
from tests.conftest import LiveServer, make_settings
from tests.dashboard.client import DashboardClient

ADMIN_TOKEN = "admin-sessions-4e1f0a9b7c3d2e5f"


@pytest.fixture
def server(database_url, live_server) -> LiveServer:
    started: LiveServer = live_server(make_settings(database_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN))
    return started


@pytest.fixture
def operator(server) -> Iterator[DashboardClient]:
    client = DashboardClient(server)
    yield client
    client.close()


def inbox_with(server: LiveServer, cookie: str) -> httpx.Response:
    """GET / with only this cookie: another browser, say, that copied it."""
    with httpx.Client(base_url=server.url, timeout=30, cookies={COOKIE_NAME: cookie}) as other:
        return other.get("/")


class TestLogout:
    @pytest.mark.parametrize("kind", ["admin", "api_key"])
    def test_a_copied_cookie_stops_working_at_logout(
        self, kind, server, operator, database, database_url
    ):
        token = ADMIN_TOKEN
        if kind == "api_key":
            account_id = uuid.UUID(
                str(database.scalar("SELECT id FROM accounts WHERE name = 'default'"))
            )
            token = in_session(database_url, lambda session: create_api_key(session, account_id))
        assert operator.log_in(token).status_code == 303
        copied = operator.http.cookies[COOKIE_NAME]
        assert inbox_with(server, copied).status_code == 200

        assert operator.log_out().status_code == 303

        refused = inbox_with(server, copied)
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/login")
        assert database.count("dashboard_sessions") == 0

    def test_logging_in_stores_only_a_hash_of_the_session_id(self, server, operator, database):
        operator.log_in(ADMIN_TOKEN)

        [row] = database.rows(
            "SELECT id_hash, kind, account_id, expires_at FROM dashboard_sessions"
        )
        cookie = operator.http.cookies[COOKIE_NAME]
        assert row.kind == "admin"
        assert row.account_id is None
        assert len(row.id_hash) == 64
        assert row.id_hash not in cookie
        assert hashlib.sha256(cookie.encode()).hexdigest() != row.id_hash

    def test_other_sessions_of_the_same_operator_go_on(self, server, database):
        first, second = DashboardClient(server), DashboardClient(server)
        try:
            first.log_in(ADMIN_TOKEN)
            second.log_in(ADMIN_TOKEN)
            first.log_out()
            assert second.http.get("/").status_code == 200
        finally:
            first.close()
            second.close()
        assert database.count("dashboard_sessions") == 1

    def test_expired_sessions_are_refused_and_cleared_at_the_next_login(
        self, server, operator, database
    ):
        operator.log_in(ADMIN_TOKEN)
        database.execute(
            "UPDATE dashboard_sessions SET expires_at = :past", past=utcnow() - timedelta(minutes=1)
        )

        assert operator.http.get("/").status_code == 303
        other = DashboardClient(server)
        try:
            other.log_in(ADMIN_TOKEN)
        finally:
            other.close()
        assert database.count("dashboard_sessions") == 1


class TestDatabase:
    def test_deleting_an_account_deletes_its_sessions(
        self, server, operator, database, database_url
    ):
        account_id = uuid.UUID(
            str(database.scalar("SELECT id FROM accounts WHERE name = 'default'"))
        )
        key = in_session(database_url, lambda session: create_api_key(session, account_id))
        operator.log_in(key)
        assert database.count("dashboard_sessions") == 1

        with database.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # As Plática's own connections do (db.py); outside a transaction to count.
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.exec_driver_sql("DELETE FROM accounts")
            connection.commit()

        assert database.count("dashboard_sessions") == 0
