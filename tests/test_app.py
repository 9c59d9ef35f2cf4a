"""The ASGI app's own guards, over real HTTP: request bodies must arrive in time."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from platica import app as platica_app
from platica.config import Settings
from tests.conftest import LiveServer, make_settings

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
