"""The ASGI app's own guards, over real HTTP: request bodies must arrive in time, and the Host
header must name this server."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from platica import app as platica_app
from platica.config import Settings
from tests.conftest import Database, LiveServer, make_settings
from tests.factories import inbound_form, post_signed

LiveServerFactory = Callable[[Settings], LiveServer]


def send_slowly(server: LiveServer, method: str, path: str, content_type: str) -> bytes:
    """Headers promising 100 bytes of body, then 10 bytes, then nothing: what the server says."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100\r\n\r\n".encode()
            + b"Body=slowl"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


class TestSlowBodies:
    """Item 17 of issue 12: a body that trickles in (or never ends) is given up on with 408,
    instead of holding a connection and a request's worth of memory forever."""

    @pytest.fixture
    def server(self, sqlite_url: str, live_server: LiveServerFactory, monkeypatch) -> LiveServer:
        monkeypatch.setattr(platica_app, "BODY_TIMEOUT_SECONDS", 0.5)
        return live_server(make_settings(sqlite_url))

    @pytest.mark.parametrize(
        ("method", "path", "content_type"),
        [
            pytest.param("POST", "/webhook/sms", "application/x-www-form-urlencoded", id="webhook"),
            pytest.param("POST", "/login", "application/x-www-form-urlencoded", id="dashboard"),
            pytest.param("PUT", "/api/sms/config", "application/json", id="api"),
        ],
    )
    def test_a_body_that_does_not_arrive_gets_408(
        self, method: str, path: str, content_type: str, server: LiveServer
    ) -> None:
        answer = send_slowly(server, method, path, content_type)

        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def get_with_host(server: LiveServer, host: str, path: str = "/healthz") -> int:
    with httpx.Client(timeout=10) as client:
        return client.get(server.url + path, headers={"Host": host}).status_code


class TestTrustedHosts:
    """Item 11 of issue 12: a request naming another host is refused (400), so nothing
    (a redirect, a link, a URL) is ever built from a Host header an attacker chose."""

    @pytest.fixture
    def server(self, sqlite_url: str, live_server: LiveServerFactory) -> LiveServer:
        return live_server(make_settings(sqlite_url, PUBLIC_BASE_URL="https://Platica.Example.com"))

    @pytest.mark.parametrize(
        "host", ["evil.example.com", "platica.example.com.evil.net", "127.0.0.2", "[::2]:8000"]
    )
    def test_another_host_gets_400(self, host: str, server: LiveServer) -> None:
        assert get_with_host(server, host) == 400

    def test_a_webhook_for_another_host_stores_nothing(self, server, sqlite_url) -> None:
        with httpx.Client(timeout=10, headers={"Host": "evil.example.com"}) as client:
            response = post_signed(
                client,
                server.url,
                "/webhook/sms",
                inbound_form(),
                signed_url="https://platica.example.com/webhook/sms",
            )
        assert response.status_code == 400
        assert Database(sqlite_url).count("messages") == 0

    @pytest.mark.parametrize(
        "host",
        ["platica.example.com", "localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"],
    )
    def test_this_server_and_the_loopback_are_allowed(self, host: str, server) -> None:
        assert get_with_host(server, host) == 200

    def test_allowed_hosts_adds_names_and_wildcards(self, sqlite_url, live_server) -> None:
        server = live_server(
            make_settings(sqlite_url, ALLOWED_HOSTS="platica.internal, *.example.org")
        )
        assert get_with_host(server, "platica.internal") == 200
        assert get_with_host(server, "eu.example.org") == 200
        assert get_with_host(server, "example.net") == 400

    def test_a_star_allows_any_host(self, sqlite_url, live_server) -> None:
        server = live_server(make_settings(sqlite_url, ALLOWED_HOSTS="*"))
        assert get_with_host(server, "anything.example.net") == 200
