"""The dashboard's phone simulator over plain HTTP (item 11 of issue 12): it records the message
in-process, as the webhook would, never through an HTTP request built from the Host header, and
what answers it is never sent to a real phone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from platica.accounts import create_account
from tests.api.conftest import in_session
from tests.conftest import LiveServer, make_settings
from tests.dashboard.client import DashboardClient
from tests.fakes import FakeTwilio
from tests.polling import wait_for

ADMIN_TOKEN = "admin-simulator-9c8b7a6f5e4d3c2b"
SENDER = "+15550100007"


class Listener:
    """An HTTP server that records whatever is posted to it: someone else's host."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                recorded.append((self.path, dict(self.headers)))
                self.rfile.read(length)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.netloc = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def admin(database_url, live_server, twilio, database) -> Iterator[DashboardClient]:
    """Twilio configured (signatures checked, replies to the fake Twilio), any Host accepted
    (as ALLOWED_HOSTS=* would), an admin logged in; one account, so it is chosen."""
    server: LiveServer = live_server(
        make_settings(
            database_url,
            PLATICA_ADMIN_TOKEN=ADMIN_TOKEN,
            TWILIO_API_BASE_URL=twilio.url,
            ALLOWED_HOSTS="*",
        )
    )
    database.execute("UPDATE channel_configs SET debounce_seconds = 0")
    client = DashboardClient(server)
    assert client.log_in(ADMIN_TOKEN).status_code == 303
    yield client
    client.close()


def simulate(client: DashboardClient, channel: str = "sms", body: str = "Hola", **headers: str):
    csrf = client.csrf("/simulator")
    return client.http.post(
        "/simulator",
        data={"channel": channel, "from": SENDER, "body": body, "csrf_token": csrf},
        headers=headers,
    )


class TestSimulator:
    def test_a_forged_host_header_never_receives_the_signed_message(self, admin, database):
        listener = Listener()
        try:
            response = simulate(admin, Host=listener.netloc)
        finally:
            listener.close()

        assert listener.requests == []
        assert response.status_code == 303, response.text
        assert database.scalar("SELECT body FROM messages WHERE direction = 'inbound'") == "Hola"

    @pytest.mark.parametrize("channel", ["sms", "whatsapp"])
    def test_the_reply_is_stored_as_a_dry_run_and_never_sent(
        self, channel, admin, database, twilio
    ):
        response = simulate(admin, channel, "¿Abren el domingo?")

        assert response.status_code == 303, response.text
        assert urlsplit(response.headers["location"]).path == "/simulator"
        conversation = parse_qs(urlsplit(response.headers["location"]).query)["conversation"]
        assert conversation[0].startswith(f"{channel}/")
        # Stored `sending` first, then settled by the dry-run sender: wait for it to settle.
        reply = wait_for(
            lambda: database.rows(
                "SELECT status, simulated, body FROM messages WHERE direction = 'outbound'"
                " AND status NOT IN ('pending', 'sending')"
            ),
            "the reply, sent",
        )
        assert [(r.status, bool(r.simulated)) for r in reply] == [("dry_run", True)]
        inbound = database.rows(
            "SELECT simulated, channel FROM messages WHERE direction = 'inbound'"
        )
        assert [(bool(r.simulated), r.channel) for r in inbound] == [(True, channel)]
        # Recorded as the webhook records a message, log entry included (unsigned: in-process).
        logs = database.rows("SELECT endpoint, outcome, signature_valid FROM webhook_logs")
        assert [(r.endpoint, r.outcome, r.signature_valid) for r in logs] == [
            (channel, "accepted", None)
        ]
        assert twilio.sent == []
        assert twilio.attempts == []

    def test_an_admin_must_choose_an_account_first(self, admin, database, database_url):
        in_session(
            database_url,
            lambda session: create_account(session, "Bodega", sms_number="+15005550001"),
        )

        response = simulate(admin)

        assert response.status_code == 422
        assert "choose an account first" in response.text
        assert database.count("messages") == 0

    def test_an_operator_writes_to_its_own_account_only(
        self, admin, database, database_url, live_server
    ):
        _, key = in_session(
            database_url,
            lambda session: create_account(session, "Bodega", sms_number="+15005550001"),
        )
        other = DashboardClient(admin.server)
        try:
            assert other.log_in(key).status_code == 303
            response = simulate(other)
        finally:
            other.close()

        assert response.status_code == 303, response.text
        [row] = database.rows(
            "SELECT a.name FROM messages m JOIN accounts a ON a.id = m.account_id"
        )
        assert row.name == "Bodega"
