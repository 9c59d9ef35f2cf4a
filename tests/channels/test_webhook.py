"""The message and status webhooks over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode
from xml.etree import ElementTree

import httpx
import pytest
from limits import parse as parse_limit
from prometheus_client import REGISTRY
from twilio.twiml.messaging_response import MessagingResponse

from platica.throttle import REJECTED_WEBHOOK_LOGS
from tests.conftest import Database, LiveServer, make_settings
from tests.factories import (
    CONTACT,
    SMS_NUMBER,
    WHATSAPP_NUMBER,
    inbound_form,
    new_sid,
    post_signed,
    sign,
    status_form,
)
from tests.records import add_queued_reply


@pytest.fixture
def server(database_url, live_server):
    return live_server(make_settings(database_url))


@pytest.fixture
def client():
    with httpx.Client(timeout=30) as client:
        yield client


def post(
    client: httpx.Client, server: LiveServer, path: str, form: dict[str, str]
) -> httpx.Response:
    return post_signed(client, server.url, path, form)


class TestReceiveMessage:
    def test_sms_is_stored_and_acknowledged_with_empty_twiml(self, server, client, database):
        response = post(client, server, "/webhook/sms", inbound_form(body="¿Abren hoy?"))

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        root = ElementTree.fromstring(response.content)
        assert root.tag == "Response"
        assert list(root) == []
        assert ElementTree.fromstring(str(MessagingResponse())).tag == root.tag
        rows = database.rows(
            "SELECT channel, direction, author, body, status, reply_state FROM messages"
        )
        assert [tuple(r) for r in rows] == [
            ("sms", "inbound", "contact", "¿Abren hoy?", "received", "pending")
        ]
        contact = database.rows("SELECT channel, address, last_inbound_at FROM contacts")[0]
        assert (contact.channel, contact.address) == ("sms", CONTACT)
        assert contact.last_inbound_at is not None
        conversation = database.rows(
            "SELECT channel, status, contact_address, account_id FROM conversations"
        )[0]
        assert (conversation.channel, conversation.status) == ("sms", "active")
        assert conversation.contact_address == CONTACT
        owner = database.scalar(
            "SELECT account_id FROM channel_configs WHERE channel = 'sms' AND phone_number = :n",
            n=SMS_NUMBER,
        )
        assert str(conversation.account_id).replace("-", "") == str(owner).replace("-", "")

    def test_whatsapp_keeps_profile_wa_id_and_media(self, server, client, database):
        form = inbound_form(
            "whatsapp",
            body="",
            NumMedia="2",
            MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            MediaContentType0="image/jpeg",
            MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
            MediaContentType1="audio/ogg",
        )
        response = post(client, server, "/webhook/whatsapp", form)

        assert response.status_code == 200
        message = database.rows("SELECT id, channel, body FROM messages")[0]
        assert message.channel == "whatsapp"
        assert message.body == ""
        media = database.rows(
            "SELECT message_id, position, kind, content_type, url, state FROM media"
            " ORDER BY position"
        )
        # Stored as they came, to be fetched by the reply task: nothing fetched in the request.
        assert [tuple(row) for row in media] == [
            (message.id, 0, "image", "image/jpeg", form["MediaUrl0"], "pending"),
            (message.id, 1, "audio", "audio/ogg", form["MediaUrl1"], "pending"),
        ]
        contact = database.rows("SELECT channel, address, profile_name, wa_id FROM contacts")[0]
        assert tuple(contact) == ("whatsapp", CONTACT, "Ana", CONTACT.lstrip("+"))

    def test_a_location_is_stored_understood_as_text(self, server, client, database):
        form = inbound_form(
            "whatsapp",
            body="",
            Latitude="19.432608",
            Longitude="-99.133209",
            Address="Plaza de la Constitución, Centro, CDMX",
            Label="Zócalo",
        )
        response = post(client, server, "/webhook/whatsapp", form)

        assert response.status_code == 200
        [location] = database.rows("SELECT kind, state, text, latitude, longitude, url FROM media")
        assert tuple(location) == (
            "location",
            "understood",
            "location: 19.432608, -99.133209, Zócalo, Plaza de la Constitución, Centro, CDMX",
            19.432608,
            -99.133209,
            None,
        )

    def test_a_location_out_of_range_is_refused_and_nothing_is_stored(
        self, server, client, database
    ):
        form = inbound_form("whatsapp", body="", Latitude="91", Longitude="-99.1")
        response = post(client, server, "/webhook/whatsapp", form)

        assert response.status_code == 400
        assert "Latitude must be between -90 and 90" in response.text
        assert database.count("messages") == 0
        assert database.count("media") == 0

    def test_messages_from_one_contact_share_a_conversation(self, server, client, database):
        for text in ("uno", "dos", "tres"):
            assert post(client, server, "/webhook/sms", inbound_form(body=text)).status_code == 200

        assert database.count("conversations") == 1
        assert database.count("contacts") == 1
        assert database.scalar("SELECT count(DISTINCT conversation_id) FROM messages") == 1

    def test_same_number_on_both_channels_is_two_conversations(self, server, client, database):
        post(client, server, "/webhook/sms", inbound_form())
        post(client, server, "/webhook/whatsapp", inbound_form("whatsapp"))

        channels = database.rows("SELECT channel FROM conversations ORDER BY channel")
        assert [r.channel for r in channels] == ["sms", "whatsapp"]

    def test_closed_conversation_stays_closed_and_a_new_one_opens(self, server, client, database):
        post(client, server, "/webhook/sms", inbound_form(body="first"))
        database.execute("UPDATE conversations SET status = 'closed'")

        post(client, server, "/webhook/sms", inbound_form(body="again"))

        rows = database.rows("SELECT id, status FROM conversations ORDER BY id")
        assert [r.status for r in rows] == ["closed", "active"]
        again = database.scalar("SELECT conversation_id FROM messages WHERE body = 'again'")
        assert again == rows[1].id

    def test_repeated_delivery_is_acknowledged_and_stored_once(self, server, client, database):
        form = inbound_form()
        first = post(client, server, "/webhook/sms", form)
        second = post(client, server, "/webhook/sms", form)

        assert first.status_code == second.status_code == 200
        assert second.content == first.content
        assert database.count("messages") == 1
        outcomes = database.rows("SELECT outcome FROM webhook_logs ORDER BY id")
        assert [r.outcome for r in outcomes] == ["accepted", "duplicate"]

    async def test_twenty_concurrent_duplicates_leave_one_row(self, server, database):
        form = inbound_form()
        signature = sign(server.url + "/webhook/sms", form)
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        server.url + "/webhook/sms",
                        data=form,
                        headers={"X-Twilio-Signature": signature},
                    )
                    for _ in range(20)
                )
            )

        assert [r.status_code for r in responses] == [200] * 20
        assert database.count("messages") == 1
        assert database.count("conversations") == 1
        assert database.count("contacts") == 1
        outcomes = [r.outcome for r in database.rows("SELECT outcome FROM webhook_logs")]
        assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 19

    async def test_concurrent_first_messages_open_one_conversation(self, server, database):
        """Different messages racing from a new contact must not open two conversations."""
        forms = [inbound_form(body=f"m{i}") for i in range(10)]
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        server.url + "/webhook/sms",
                        data=form,
                        headers={"X-Twilio-Signature": sign(server.url + "/webhook/sms", form)},
                    )
                    for form in forms
                )
            )

        assert [r.status_code for r in responses] == [200] * 10
        assert database.count("messages") == 10
        assert database.count("conversations") == 1
        assert database.count("contacts") == 1

    def test_idempotency_token_is_logged(self, server, client, database):
        form = inbound_form()
        client.post(
            server.url + "/webhook/sms",
            data=form,
            headers={
                "X-Twilio-Signature": sign(server.url + "/webhook/sms", form),
                "I-Twilio-Idempotency-Token": "token-123",
            },
        )
        assert database.scalar("SELECT idempotency_token FROM webhook_logs") == "token-123"


class TestMalformedMessages:
    """Bad input gets a clear 4xx, never a 5xx, and stores nothing but a log entry."""

    def assert_refused(self, response, database, status, text):
        assert response.status_code == status, response.text
        assert text in response.json()["error"]["message"]
        assert database.count("messages") == 0
        log = database.rows("SELECT status_code, outcome, reason FROM webhook_logs")
        assert [(r.status_code, r.outcome) for r in log] == [(status, "rejected")]
        assert text in log[0].reason

    @pytest.mark.parametrize("field", ["MessageSid", "From", "To"])
    def test_missing_required_field(self, field, server, client, database):
        form = inbound_form()
        del form[field]
        response = post(client, server, "/webhook/sms", form)
        self.assert_refused(response, database, 400, f"missing required field {field}")

    @pytest.mark.parametrize("field", ["MessageSid", "From", "To"])
    def test_blank_required_field(self, field, server, client, database):
        response = post(client, server, "/webhook/sms", inbound_form(**{field: " "}))
        self.assert_refused(response, database, 400, f"missing required field {field}")

    def test_unknown_to_is_not_found(self, server, client, database):
        response = post(client, server, "/webhook/sms", inbound_form(to="+15550009999"))
        self.assert_refused(response, database, 404, "no account owns")
        assert "+15550009999" not in response.text

    def test_whatsapp_number_on_the_sms_webhook(self, server, client, database):
        form = inbound_form("whatsapp")
        response = post(client, server, "/webhook/sms", form)
        self.assert_refused(response, database, 400, "/webhook/whatsapp")

    def test_sms_on_the_whatsapp_webhook(self, server, client, database):
        response = post(client, server, "/webhook/whatsapp", inbound_form("sms"))
        self.assert_refused(response, database, 400, "WhatsApp address")

    def test_body_over_64_kib(self, server, client, database):
        form = inbound_form(body="x" * (64 * 1024 + 1))
        response = post(client, server, "/webhook/sms", form)
        self.assert_refused(response, database, 413, "64 KiB")

    def test_chunked_body_over_64_kib(self, server, database):
        def chunks():
            yield b"MessageSid=SM" + b"0" * 32 + b"&Body="
            for _ in range(100):
                yield b"y" * 1024

        response = httpx.post(
            server.url + "/webhook/sms",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assert_refused(response, database, 413, "64 KiB")

    def test_json_body(self, server, client, database):
        response = client.post(server.url + "/webhook/sms", json=inbound_form())
        self.assert_refused(response, database, 415, "application/x-www-form-urlencoded")

    def test_bad_utf8(self, server, client, database):
        response = client.post(
            server.url + "/webhook/sms",
            content=b"MessageSid=SM" + b"1" * 32 + b"&Body=%ff%fe&From=%2B1555&To=%2B1555",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assert_refused(response, database, 400, "UTF-8")

    def test_raw_invalid_utf8_bytes(self, server, client, database):
        response = client.post(
            server.url + "/webhook/sms",
            content=b"Body=\xff\xfe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assert_refused(response, database, 400, "UTF-8")

    @pytest.mark.parametrize("value", ["two", "-1", "11", "1e3"])
    def test_bad_num_media(self, value, server, client, database):
        response = post(client, server, "/webhook/sms", inbound_form(NumMedia=value))
        self.assert_refused(response, database, 400, "NumMedia")

    def test_malformed_message_sid(self, server, client, database):
        response = post(client, server, "/webhook/sms", inbound_form(sid="not-a-sid"))
        self.assert_refused(response, database, 400, "MessageSid")

    def test_get_is_not_allowed(self, server, client):
        response = client.get(server.url + "/webhook/sms")
        assert response.status_code == 405

    @pytest.mark.parametrize(
        "content",
        [b"", b"&&&", b"=", b"MessageSid", b"%", b"a=%zz", b"From=whatsapp%3A&To=&MessageSid=SM"],
    )
    def test_garbage_forms_never_get_a_5xx(self, content, server, client, database):
        response = client.post(
            server.url + "/webhook/sms",
            content=content,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        # Unsigned, so 403 — signature checks come before field checks.
        assert response.status_code == 403
        assert database.count("messages") == 0


class TestRejectedRequestsLogging:
    """Item 12 of issue 12: unsigned or malformed posts must not fill the disk. A rejected
    request's log entry keeps what explains the rejection, a few hundred bytes; past a
    per-process limit nothing is written (or logged) and only a counter counts them."""

    def forged(self, size: int = 60 * 1024) -> dict[str, str]:
        return inbound_form(body="x" * size, Padding="y" * 100)

    def unlogged(self, endpoint: str) -> float:
        return (
            REGISTRY.get_sample_value("platica_webhooks_unlogged_total", {"endpoint": endpoint})
            or 0.0
        )

    def test_a_rejected_request_keeps_only_what_explains_it(self, server, client, database):
        form = self.forged()
        response = client.post(server.url + "/webhook/sms", data=form)

        assert response.status_code == 403
        [entry] = database.rows("SELECT message_sid, reason, params FROM webhook_logs")
        params = entry.params if isinstance(entry.params, dict) else json.loads(entry.params)
        assert len(json.dumps(params)) < 512
        assert params["MessageSid"] == [form["MessageSid"]]
        assert params["AccountSid"] == [form["AccountSid"]]
        assert set(params["_fields"]) == set(form)
        assert params["_bytes"] == [str(len(urlencode(form)))]
        assert "x" * 100 not in json.dumps(params)
        assert entry.message_sid == form["MessageSid"]

    @pytest.mark.parametrize(
        ("content", "status"),
        [
            pytest.param(b"=" * 70_000, 413, id="too-large"),
            pytest.param(b'{"Body": "' + b"x" * 60_000 + b'"}', 415, id="not-a-form"),
        ],
    )
    def test_unparsed_bodies_leave_their_size_only(self, content, status, server, database):
        content_type = "application/json" if status == 415 else "application/x-www-form-urlencoded"
        response = httpx.post(
            server.url + "/webhook/sms", content=content, headers={"Content-Type": content_type}
        )

        assert response.status_code == status
        [params] = [r.params for r in database.rows("SELECT params FROM webhook_logs")]
        params = params if isinstance(params, dict) else json.loads(params)
        assert params == {"_bytes": [str(len(content))]}

    def test_huge_field_names_and_reasons_are_capped(self, server, database):
        form = inbound_form(**{f"{'N' * 5000}{i}": "1" for i in range(5)})
        response = httpx.post(
            server.url + "/webhook/sms",
            content=urlencode(form).encode() + b"&a%00" + b"b" * 9000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert response.status_code == 400
        [entry] = database.rows("SELECT reason, params FROM webhook_logs")
        params = entry.params if isinstance(entry.params, dict) else json.loads(entry.params)
        assert len(json.dumps(params)) < 512
        assert len(entry.reason) <= 300

    def test_a_flood_of_forged_posts_is_logged_up_to_the_limit_then_counted(
        self, server, client, database
    ):
        limit = parse_limit(REJECTED_WEBHOOK_LOGS).amount
        before = self.unlogged("sms")
        form = self.forged(size=1024)

        statuses = [
            client.post(server.url + "/webhook/sms", data=form).status_code
            for _ in range(limit + 15)
        ]

        assert statuses == [403] * (limit + 15)
        assert database.count("webhook_logs") == limit
        assert self.unlogged("sms") - before == 15
        # Accepted requests are still logged, with every field.
        good = inbound_form(body="still here")
        assert post(client, server, "/webhook/sms", good).status_code == 200
        logged = database.rows("SELECT params FROM webhook_logs WHERE outcome = 'accepted'")
        [params] = [
            r.params if isinstance(r.params, dict) else json.loads(r.params) for r in logged
        ]
        assert params == {name: [value] for name, value in good.items()}


class TestUnsignedMalformed:
    """With signature checks off, field validation answers directly."""

    @pytest.mark.parametrize(
        "content",
        [b"", b"&&&", b"=", b"MessageSid", b"%", b"a=%zz", b"From=whatsapp%3A&To=&MessageSid=SM"],
    )
    def test_garbage_forms_get_400(self, content, sqlite_url, live_server):
        settings = make_settings(sqlite_url, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)
        server = live_server(settings)
        response = httpx.post(
            server.url + "/webhook/sms",
            content=content,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"]
        assert Database(sqlite_url).count("messages") == 0


class TestStatusCallback:
    @pytest.fixture
    def outbound_sid(self, server, client, database) -> str:
        post(client, server, "/webhook/sms", inbound_form())
        sid = new_sid()
        add_queued_reply(database, sid)
        return sid

    def status_of(self, database: Database, sid: str):
        return database.rows(
            "SELECT status, error_code, error_message FROM messages WHERE twilio_sid = :sid",
            sid=sid,
        )[0]

    def test_statuses_move_forward(self, server, client, database, outbound_sid):
        for status in ("sent", "delivered", "read"):
            response = post(client, server, "/webhook/status", status_form(outbound_sid, status))
            assert response.status_code == 200
            assert self.status_of(database, outbound_sid).status == status

    def test_late_older_status_is_ignored(self, server, client, database, outbound_sid):
        post(client, server, "/webhook/status", status_form(outbound_sid, "delivered"))
        response = post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))

        assert response.status_code == 200
        assert self.status_of(database, outbound_sid).status == "delivered"
        outcomes = [
            r.outcome
            for r in database.rows(
                "SELECT outcome FROM webhook_logs WHERE endpoint = 'status' ORDER BY id"
            )
        ]
        assert outcomes == ["status_updated", "status_stale"]

    def test_repeated_status_is_harmless(self, server, client, database, outbound_sid):
        post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))
        response = post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))
        assert response.status_code == 200
        assert self.status_of(database, outbound_sid).status == "sent"

    def test_failure_keeps_its_error_code(self, server, client, database, outbound_sid):
        post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))
        post(
            client,
            server,
            "/webhook/status",
            status_form(outbound_sid, "undelivered", ErrorCode="30003", ErrorMessage="Unreachable"),
        )
        post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))

        row = self.status_of(database, outbound_sid)
        assert (row.status, row.error_code, row.error_message) == (
            "undelivered",
            30003,
            "Unreachable",
        )

    def outcomes(self, database: Database) -> list[str]:
        rows = database.rows(
            "SELECT outcome FROM webhook_logs WHERE endpoint = 'status' ORDER BY id"
        )
        return [r.outcome for r in rows]

    def test_a_failed_message_never_shows_delivered(self, server, client, database, outbound_sid):
        """Failed is terminal (Twilio never handed the message on): what comes after is logged
        as ignored, not applied."""
        post(client, server, "/webhook/status", status_form(outbound_sid, "sent"))
        failed = status_form(outbound_sid, "failed", ErrorCode="30003", ErrorMessage="Unreachable")
        post(client, server, "/webhook/status", failed)
        for status in ("delivered", "read", "undelivered"):
            response = post(client, server, "/webhook/status", status_form(outbound_sid, status))
            assert response.status_code == 200

        row = self.status_of(database, outbound_sid)
        assert (row.status, row.error_code, row.error_message) == ("failed", 30003, "Unreachable")
        assert self.outcomes(database)[2:] == ["status_ignored"] * 3

    @pytest.mark.parametrize("success", ["delivered", "read"])
    def test_delivered_after_undelivered_clears_the_error(
        self, server, client, database, outbound_sid, success
    ):
        """Carriers retry: a later delivery supersedes `undelivered`, and its error goes."""
        undelivered = status_form(
            outbound_sid, "undelivered", ErrorCode="30003", ErrorMessage="Unreachable"
        )
        post(client, server, "/webhook/status", undelivered)
        post(client, server, "/webhook/status", status_form(outbound_sid, success))

        row = self.status_of(database, outbound_sid)
        assert (row.status, row.error_code, row.error_message) == (success, None, None)
        assert self.outcomes(database) == ["status_updated", "status_updated"]

    def test_a_delivery_report_with_an_error_code_stores_none(
        self, server, client, database, outbound_sid
    ):
        form = status_form(outbound_sid, "delivered", ErrorCode="30003")
        post(client, server, "/webhook/status", form)

        row = self.status_of(database, outbound_sid)
        assert (row.status, row.error_code, row.error_message) == ("delivered", None, None)

    def test_word_error_codes_are_kept(self, server, client, database, outbound_sid):
        form = status_form(outbound_sid, "failed", ErrorCode="InvalidSandboxRequest")
        post(client, server, "/webhook/status", form)
        row = self.status_of(database, outbound_sid)
        assert (row.status, row.error_code, row.error_message) == (
            "failed",
            None,
            "InvalidSandboxRequest",
        )

    def test_unknown_sid_is_acknowledged_and_logged(self, server, client, database):
        response = post(client, server, "/webhook/status", status_form(new_sid(), "delivered"))
        assert response.status_code == 200
        assert database.scalar("SELECT outcome FROM webhook_logs") == "status_unknown"

    def test_unknown_status_is_refused(self, server, client, database, outbound_sid):
        response = post(client, server, "/webhook/status", status_form(outbound_sid, "teleported"))
        assert response.status_code == 400
        assert "MessageStatus" in response.json()["error"]["message"]
        assert self.status_of(database, outbound_sid).status == "queued"

    def test_missing_status_is_refused(self, server, client, outbound_sid):
        form = status_form(outbound_sid, "sent")
        del form["MessageStatus"], form["SmsStatus"]
        response = post(client, server, "/webhook/status", form)
        assert response.status_code == 400


class TestDefaultAccount:
    def test_configured_numbers_belong_to_the_default_account(self, server, database):
        rows = database.rows(
            "SELECT a.name, c.channel, c.phone_number FROM channel_configs c"
            " JOIN accounts a ON a.id = c.account_id ORDER BY c.channel"
        )
        assert [tuple(r) for r in rows] == [
            ("default", "sms", SMS_NUMBER),
            ("default", "whatsapp", WHATSAPP_NUMBER),
        ]

    def test_restart_does_not_duplicate_it(self, database_url, live_server, database):
        live_server(make_settings(database_url)).stop()
        live_server(make_settings(database_url))
        assert database.count("accounts") == 1
        assert database.count("channel_configs") == 2

    def test_a_changed_number_moves_to_the_default_account(
        self, database_url, live_server, database
    ):
        live_server(make_settings(database_url)).stop()
        live_server(make_settings(database_url, TWILIO_PHONE_NUMBER="+15005550001"))
        numbers = {
            r.phone_number for r in database.rows("SELECT phone_number FROM channel_configs")
        }
        assert numbers == {"+15005550001", WHATSAPP_NUMBER}

    def test_without_twilio_the_demo_numbers_are_used(self, sqlite_url, live_server):
        settings = make_settings(
            sqlite_url,
            TWILIO_ACCOUNT_SID=None,
            TWILIO_AUTH_TOKEN=None,
            TWILIO_PHONE_NUMBER=None,
            TWILIO_WHATSAPP_NUMBER=None,
        )
        server = live_server(settings)
        response = httpx.post(server.url + "/webhook/whatsapp", data=inbound_form("whatsapp"))
        assert response.status_code == 200
