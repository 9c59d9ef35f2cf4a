"""docs/deploy.md's reverse proxies, as written there, in front of a live Plática over TLS: a
webhook Twilio signed for the public https URL is accepted, a forged one refused, and the
dashboard's cookie comes back marked Secure (X-Forwarded-Proto reached the app)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from platica.config import Settings
from tests.conftest import Database, LiveServer, free_port, make_settings
from tests.factories import inbound_form, sign
from tests.polling import wait_for

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
HOST = "platica.panaderiasol.es"
DOCUMENTED_UPSTREAM = "127.0.0.1:8000"


def documented(language: str) -> str:
    """The one ```language block of docs/deploy.md."""
    blocks: list[str] = re.findall(rf"^```{language}\n(.*?)^```", DEPLOY.read_text(), re.S | re.M)
    assert len(blocks) == 1, f"docs/deploy.md should have one {language} block"
    return blocks[0]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for HOST, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def nginx_command(directory: Path, port: int, upstream: str) -> list[str]:
    """nginx running the documented server blocks, on test ports and with the test certificate."""
    cert, key = make_certificate(directory)
    block = documented("nginx")
    live = f"/etc/letsencrypt/live/{HOST}"
    for documented_text, test_text in (
        ("listen 80;", f"listen 127.0.0.1:{free_port()};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        (f"{live}/fullchain.pem", str(cert)),
        (f"{live}/privkey.pem", str(key)),
        (DOCUMENTED_UPSTREAM, upstream),
    ):
        assert documented_text in block, f"docs/deploy.md's nginx block lost {documented_text!r}"
        block = block.replace(documented_text, test_text)
    temp = "".join(
        f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    uwsgi = f"uwsgi_temp_path {directory / 'uwsgi'}; scgi_temp_path {directory / 'scgi'};"
    config = directory / "nginx.conf"
    config.write_text(
        f"daemon off; pid {directory / 'nginx.pid'}; error_log {directory / 'error.log'};\n"
        f"events {{}}\nhttp {{ access_log off; {temp} {uwsgi}\n{block}\n}}\n"
    )
    return ["nginx", "-c", str(config), "-e", str(directory / "error.log")]


def caddy_command(directory: Path, port: int, upstream: str) -> list[str]:
    """Caddy running the documented site, on a test port and with the test certificate."""
    cert, key = make_certificate(directory)
    block = documented("caddy")
    site = f"{HOST} {{"
    for documented_text, test_text in (
        (site, f"{HOST}:{port} {{\n\ttls {cert} {key}"),
        (DOCUMENTED_UPSTREAM, upstream),
    ):
        assert documented_text in block, f"docs/deploy.md's Caddyfile lost {documented_text!r}"
        block = block.replace(documented_text, test_text)
    config = directory / "Caddyfile"
    config.write_text("{\n\tadmin off\n\tauto_https disable_redirects\n}\n" + block)
    return ["caddy", "run", "--adapter", "caddyfile", "--config", str(config)]


PROXIES: dict[str, Callable[[Path, int, str], list[str]]] = {
    "nginx": nginx_command,
    "caddy": caddy_command,
}


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Proxied:
    """Plática behind the proxy: post to `url` (the public https URL, HOST resolved locally)."""

    def __init__(self, server: LiveServer, port: int, cert: Path) -> None:
        self.server = server
        self.url = f"https://{HOST}:{port}"
        self.port = port
        self.context = ssl.create_default_context(cafile=str(cert))

    def client(self) -> httpx.Client:
        return httpx.Client(verify=self.context, timeout=10)

    def post(
        self,
        client: httpx.Client,
        path: str,
        data: dict[str, str],
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """To 127.0.0.1, naming HOST in the Host header and TLS's SNI, as a resolver would."""
        request = client.build_request(
            "POST",
            f"https://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"Host": f"{HOST}:{self.port}", **(headers or {})},
            extensions={"sni_hostname": HOST},
        )
        return client.send(request)


@pytest.fixture(params=sorted(PROXIES))
def proxied(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_url: str,
    live_server: Callable[..., LiveServer],
) -> Iterator[Proxied]:
    kind: str = request.param
    executable = shutil.which(kind)
    if executable is None:
        reason = f"{kind} is not installed (apt-get install {kind}): its example is not tried"
        if os.environ.get("CI") == "true":  # .ci/run installs it: its absence is a failure there
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    settings: Settings = make_settings(sqlite_url, PUBLIC_BASE_URL=f"https://{HOST}:{port}")
    server = live_server(settings, worker=False)
    command = PROXIES[kind](tmp_path, port, f"127.0.0.1:{server.port}")
    command[0] = executable
    environment = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    output = tmp_path / f"{kind}.out"
    with output.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_for(lambda: accepts(port) or process.poll() is not None, f"{kind} to listen")
        assert process.poll() is None, output.read_text()
        yield Proxied(server, port, tmp_path / "cert.pem")
    finally:
        process.terminate()
        process.wait(timeout=10)


class TestDocumentedProxies:
    def test_a_webhook_signed_for_the_public_url_is_accepted(self, proxied, sqlite_url):
        form = inbound_form(body="Hola, ¿abren el domingo?")
        signature = sign(proxied.url + "/webhook/sms", form)
        with proxied.client() as client:
            response = proxied.post(
                client, "/webhook/sms", data=form, headers={"X-Twilio-Signature": signature}
            )
        assert response.status_code == 200, response.text
        assert "<Response" in response.text
        assert Database(sqlite_url).count("messages") == 1

    def test_a_signature_for_another_url_is_refused(self, proxied, sqlite_url):
        form = inbound_form()
        # What Plática would check if it trusted the address it is reached at, behind the proxy.
        signature = sign(f"http://127.0.0.1:{proxied.server.port}/webhook/sms", form)
        with proxied.client() as client:
            response = proxied.post(
                client, "/webhook/sms", data=form, headers={"X-Twilio-Signature": signature}
            )
        assert response.status_code == 403
        assert Database(sqlite_url).count("messages") == 0

    def test_the_dashboard_cookie_is_secure_behind_https(self, proxied):
        with proxied.client() as client:
            response = proxied.post(client, "/login", data={"key": "plk_wrong"})
        cookies = response.headers.get_list("set-cookie")
        assert cookies, response.text
        assert all("Secure" in cookie for cookie in cookies)
