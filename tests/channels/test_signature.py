"""X-Twilio-Signature: the published test vectors, and the check as Twilio's requests meet it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from platica.channels import forms
from platica.channels.webhook import signature_matches
from tests.conftest import Database, LiveServer, make_settings
from tests.factories import AUTH_TOKEN, inbound_form, post_signed, sign
from tests.logs import log_events

TOKEN = "12345"
URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}


# twilio-python's base vector: TOKEN's signature of PARAMS posted to URI.
SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


class TestSignatureVectors:
    """twilio-python's own vectors, run through the check the webhooks use."""

    @pytest.mark.parametrize(
        ("uri", "params", "signature"),
        [
            pytest.param(URI, PARAMS, SIGNATURE, id="base_vector"),
            pytest.param(
                "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                PARAMS,
                SIGNATURE,
                id="https_port_is_removed",
            ),
            pytest.param(
                "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                PARAMS,
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
                id="http_with_port",
            ),
            pytest.param(URI, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=", id="https_port_443_is_added"),
            pytest.param(
                "http://mycompany.com/myapp.php?foo=1&bar=2",
                PARAMS,
                "0ZXoZLH/DfblKGATFgpif+LLRf4=",
                id="http_port_80_is_added",
            ),
            pytest.param(
                URI,
                {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234", "1234"]},
                "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
                id="repeated_fields",
            ),
            pytest.param(
                URI,
                {"MessagingBinding.Address": ["+1415xxxxxxx", "+1325xxxxxxx"]},
                "83O6e2vORAoJHUNzJjDWN1jz+BA=",
                id="repeated_fields_in_any_order",
            ),
            pytest.param(
                "https://mycompany.com/myapp.php?foo=1&bar=2&Body=It%27s+amazing",
                PARAMS,
                "TfZzewPq8wqrGlMfyAud8+/IvJ0=",
                id="percent_encoded_query_as_received",
            ),
        ],
    )
    def test_matches(self, uri, params, signature):
        assert signature_matches(TOKEN, uri, params, signature)

    @pytest.mark.parametrize(
        ("token", "uri", "params"),
        [
            pytest.param("54321", URI, PARAMS, id="wrong_token"),
            pytest.param(TOKEN, URI, {**PARAMS, "Digits": ["1235"]}, id="changed_field"),
            pytest.param(TOKEN, URI, {**PARAMS, "Extra": ["1"]}, id="added_field"),
            pytest.param(
                TOKEN, "https://mycompany.com/other.php?foo=1&bar=2", PARAMS, id="other_url"
            ),
        ],
    )
    def test_does_not_match(self, token, uri, params):
        assert not signature_matches(token, uri, params, SIGNATURE)


StartServer = Callable[..., LiveServer]


class TestWebhookSignature:
    """Over real HTTP: what is refused stores nothing but a webhook log entry."""

    def assert_refused(self, response: httpx.Response, database: Database, reason: str) -> None:
        assert response.status_code == 403
        assert reason in response.json()["error"]["message"]
        assert database.count("messages") == 0
        assert database.count("conversations") == 0
        assert database.count("contacts") == 0
        logs = database.rows(
            "SELECT status_code, outcome, signature_valid, reason FROM webhook_logs"
        )
        assert len(logs) == 1
        assert logs[0].status_code == 403
        assert logs[0].outcome == "rejected"
        assert not logs[0].signature_valid
        assert reason in logs[0].reason

    def test_signed_request_is_accepted(self, database_url, database, live_server):
        server = live_server(make_settings(database_url))
        with httpx.Client() as client:
            response = post_signed(client, server.url, "/webhook/sms", inbound_form())
        assert response.status_code == 200
        assert database.count("messages") == 1
        assert database.scalar("SELECT signature_valid FROM webhook_logs")

    def test_unsigned_request_is_refused(self, database_url, database, live_server):
        server = live_server(make_settings(database_url))
        response = httpx.post(server.url + "/webhook/sms", data=inbound_form())
        self.assert_refused(response, database, "missing X-Twilio-Signature")

    def test_wrong_signature_is_refused(self, database_url, database, live_server):
        server = live_server(make_settings(database_url))
        with httpx.Client() as client:
            response = post_signed(
                client, server.url, "/webhook/whatsapp", inbound_form("whatsapp"), token="f" * 32
            )
        self.assert_refused(response, database, "does not match")

    def test_signature_for_another_url_is_refused(self, database_url, database, live_server):
        server = live_server(make_settings(database_url))
        with httpx.Client() as client:
            response = post_signed(
                client,
                server.url,
                "/webhook/sms",
                inbound_form(),
                signed_url=server.url + "/webhook/whatsapp",
            )
        self.assert_refused(response, database, "does not match")

    def test_tampered_field_is_refused(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url))
        form = inbound_form(body="pay 10")
        signature = sign(server.url + "/webhook/sms", form)
        response = httpx.post(
            server.url + "/webhook/sms",
            data={**form, "Body": "pay 1000"},
            headers={"X-Twilio-Signature": signature},
        )
        assert response.status_code == 403
        assert Database(sqlite_url).count("messages") == 0

    def test_unknown_extra_fields_are_covered(self, sqlite_url, live_server):
        """Twilio adds fields without notice: a signature over all of them validates."""
        server = live_server(make_settings(sqlite_url))
        form = inbound_form(FutureField="x", ReferralNumMedia="0")
        with httpx.Client() as client:
            response = post_signed(client, server.url, "/webhook/sms", form)
        assert response.status_code == 200

    def test_query_string_is_part_of_the_signed_url(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url))
        with httpx.Client() as client:
            good = post_signed(client, server.url, "/webhook/sms?tenant=a", inbound_form())
            bad = post_signed(
                client,
                server.url,
                "/webhook/sms?tenant=a",
                inbound_form(),
                signed_url=server.url + "/webhook/sms",
            )
        assert good.status_code == 200
        assert bad.status_code == 403

    def test_behind_a_proxy_with_public_base_url(self, sqlite_url, live_server):
        """Twilio signs the public URL; the server sees its private one."""
        public = "https://platica.example.com"
        server = live_server(make_settings(sqlite_url, PUBLIC_BASE_URL=public))
        with httpx.Client() as client:
            behind_proxy = post_signed(
                client,
                server.url,
                "/webhook/sms",
                inbound_form(),
                signed_url=public + "/webhook/sms",
            )
            signed_for_private_url = post_signed(client, server.url, "/webhook/sms", inbound_form())
        assert behind_proxy.status_code == 200
        assert signed_for_private_url.status_code == 403

    def test_public_base_url_with_a_path_prefix(self, sqlite_url, live_server):
        public = "https://example.com/platica"
        server = live_server(make_settings(sqlite_url, PUBLIC_BASE_URL=public + "/"))
        with httpx.Client() as client:
            response = post_signed(
                client,
                server.url,
                "/webhook/sms",
                inbound_form(),
                signed_url=public + "/webhook/sms",
            )
        assert response.status_code == 200

    def test_status_callbacks_are_checked_too(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url))
        response = httpx.post(
            server.url + "/webhook/status",
            data={"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"},
        )
        assert response.status_code == 403

    def test_without_twilio_credentials_nothing_is_checked(self, sqlite_url, live_server):
        settings = make_settings(sqlite_url, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)
        server = live_server(settings)
        response = httpx.post(server.url + "/webhook/sms", data=inbound_form())
        assert response.status_code == 200
        assert Database(sqlite_url).scalar("SELECT signature_valid FROM webhook_logs") is None

    def test_a_403_does_not_show_the_url_the_server_computed(self, sqlite_url, live_server):
        """Item 17 of issue 12: an unauthenticated caller learns nothing of PUBLIC_BASE_URL; the
        operator finds it in the log and the webhook log entry."""
        public = "https://platica.example.com/hidden-prefix"
        server = live_server(make_settings(sqlite_url, PUBLIC_BASE_URL=public))
        with log_events() as records, httpx.Client() as client:
            response = post_signed(client, server.url, "/webhook/sms", inbound_form())

        assert response.status_code == 403
        assert "hidden-prefix" not in response.text
        assert "does not match" in response.json()["error"]["message"]
        [event] = records.named("webhook.rejected")
        assert event["signed_url"] == public + "/webhook/sms"
        reason = Database(sqlite_url).scalar("SELECT reason FROM webhook_logs")
        assert public + "/webhook/sms" in reason

    def test_auth_token_never_reaches_the_webhook_log(self, sqlite_url, live_server):
        server = live_server(make_settings(sqlite_url))
        with httpx.Client() as client:
            post_signed(client, server.url, "/webhook/sms", inbound_form(), token="f" * 32)
        dump = str(Database(sqlite_url).rows("SELECT * FROM webhook_logs"))
        assert AUTH_TOKEN not in dump


@pytest.mark.parametrize("algorithm", ["HMAC_SHA256"])
def test_signature_settings_header_selects_the_algorithm(algorithm, sqlite_url, live_server):
    """Twilio's newer signature settings header names the HMAC in use."""
    server = live_server(make_settings(sqlite_url))
    url = server.url + "/webhook/sms"
    form = inbound_form()
    signature = forms.signature(form, AUTH_TOKEN, url, algorithm=algorithm)
    response = httpx.post(
        url,
        data=form,
        headers={
            "X-Twilio-Signature": signature,
            "X-Twilio-Webhooks-Signature-Settings": f"algorithm={algorithm}",
        },
    )
    assert response.status_code == 200
