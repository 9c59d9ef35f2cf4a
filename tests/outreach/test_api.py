"""/api/{channel}/templates over real HTTP on SQLite and PostgreSQL: listing (and what may be
sent on each channel), syncing from the fake Twilio's Content API, adding by hand, deleting,
and each account seeing only its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import ADMIN_TOKEN, Api
from tests.conftest import LiveServer, sqlite_only
from tests.stack import ADMIN_TOKEN as STACK_ADMIN_TOKEN
from tests.stack import live_stack

PEDIDO = "Hola {{1}}, su pedido {{2}} está listo para recoger."
CITA = "Buenos días {{nombre}}, le recordamos su cita del {{fecha}}."
MANUAL_SID = "HX" + "0f" * 16
TEMPLATE_FIELDS = {
    "id",
    "sid",
    "name",
    "language",
    "body",
    "variables",
    "samples",
    "approval",
    "rejection_reason",
    "source",
    "sendable",
    "synced_at",
    "updated_at",
}


def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == code
    message: str = error["message"]
    return message


def seed(api: Api) -> dict[str, str]:
    """Three templates on Twilio (approved, pending, rejected), synced into account A."""
    twilio = api.twilio
    sids = {
        "pedido_listo": twilio.add_content(
            "pedido_listo", PEDIDO, variables={"1": "Ana", "2": "A-1043"}
        ),
        "recordatorio_cita": twilio.add_content("recordatorio_cita", CITA, approval="Pending"),
        "oferta": twilio.add_content(
            "oferta", "¡{{1}}% de descuento!", approval="REJECTED", rejection_reason="Promocional"
        ),
    }
    api.ok(api.post("/api/whatsapp/templates/sync"))
    return sids


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


@sqlite_only
class TestList:
    def test_whatsapp_lists_all_saying_which_may_be_sent(self, api: Api) -> None:
        sids = seed(api)

        items = api.ok(api.get("/api/whatsapp/templates"))["items"]

        assert [item["name"] for item in items] == ["oferta", "pedido_listo", "recordatorio_cita"]
        assert set(items[0]) == TEMPLATE_FIELDS
        found = by_name(items)
        pedido = found["pedido_listo"]
        assert pedido["sid"] == sids["pedido_listo"]
        assert pedido["body"] == PEDIDO
        assert pedido["variables"] == ["1", "2"]
        assert pedido["samples"] == {"1": "Ana", "2": "A-1043"}
        assert pedido["approval"] == "approved"
        assert pedido["source"] == "twilio"
        assert pedido["sendable"] is True
        assert pedido["synced_at"] is not None
        assert found["recordatorio_cita"]["variables"] == ["nombre", "fecha"]
        assert found["recordatorio_cita"]["approval"] == "pending"
        assert found["recordatorio_cita"]["sendable"] is False
        assert found["oferta"]["approval"] == "rejected"
        assert found["oferta"]["rejection_reason"] == "Promocional"
        assert found["oferta"]["sendable"] is False

    def test_sendable_filter_per_channel(self, api: Api) -> None:
        seed(api)

        whatsapp = api.ok(api.get("/api/whatsapp/templates", sendable="true"))["items"]
        sms = api.ok(api.get("/api/sms/templates", sendable="true"))["items"]

        assert [item["name"] for item in whatsapp] == ["pedido_listo"]
        # SMS has no approval: every template may be sent there.
        assert [item["name"] for item in sms] == ["oferta", "pedido_listo", "recordatorio_cita"]
        assert all(item["sendable"] for item in sms)

    def test_none_yet(self, api: Api) -> None:
        assert api.ok(api.get("/api/whatsapp/templates")) == {"items": []}

    def test_needs_credentials(self, api: Api) -> None:
        response = api.get("/api/whatsapp/templates", token=None)
        assert_error(response, 401, "unauthorized")


class TestSync:
    def test_summary_and_items(self, api: Api) -> None:
        sid = api.twilio.add_content("pedido_listo", PEDIDO, approval="pending")
        api.twilio.add_content("recordatorio_cita", CITA)

        first = api.ok(api.post("/api/whatsapp/templates/sync"))
        api.twilio.remove_content(sid)
        api.twilio.add_content("pedido_listo", PEDIDO, approval="approved", sid=sid)
        api.twilio.add_content("encuesta", "¿Qué tal le atendimos, {{1}}?", approval=None)
        second = api.ok(api.post("/api/sms/templates/sync"))

        assert {key: first[key] for key in ("added", "updated", "removed", "total")} == {
            "added": 2,
            "updated": 0,
            "removed": 0,
            "total": 2,
        }
        assert by_name(first["items"])["pedido_listo"]["sendable"] is False
        assert {key: second[key] for key in ("added", "updated", "removed", "total")} == {
            "added": 1,
            "updated": 1,
            "removed": 0,
            "total": 3,
        }
        found = by_name(second["items"])
        assert found["pedido_listo"]["approval"] == "approved"
        assert found["encuesta"]["approval"] == "unsubmitted"
        assert found["encuesta"]["sendable"] is True  # on SMS
        assert api.database.count("templates") == 3

    def test_removed_from_twilio_but_manual_kept(self, api: Api) -> None:
        sids = seed(api)
        api.ok(
            api.post(
                "/api/whatsapp/templates", {"sid": MANUAL_SID, "name": "a_mano", "body": "Hola"}
            ),
            201,
        )
        api.twilio.remove_content(sids["oferta"])

        summary = api.ok(api.post("/api/whatsapp/templates/sync"))

        assert (summary["added"], summary["updated"], summary["removed"]) == (0, 0, 1)
        assert summary["total"] == 3
        assert sorted(item["name"] for item in summary["items"]) == [
            "a_mano",
            "pedido_listo",
            "recordatorio_cita",
        ]

    def test_refused_credentials_are_a_502(self, api: Api) -> None:
        api.twilio.add_content("pedido_listo", PEDIDO)
        api.twilio.auth_token = "f" * 32

        message = assert_error(
            api.post("/api/whatsapp/templates/sync"), 502, "twilio_credentials_refused"
        )

        assert "TWILIO_AUTH_TOKEN" in message
        assert api.database.count("templates") == 0

    def test_twilio_failing_is_a_502(self, api: Api) -> None:
        api.twilio.fail_next("content:500")

        message = assert_error(api.post("/api/whatsapp/templates/sync"), 502, "twilio_unavailable")

        assert "try again" in message


def test_sync_without_twilio_is_a_409(
    database_url: str, live_server: Callable[..., LiveServer]
) -> None:
    with live_stack(
        database_url, live_server, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None
    ) as stack:
        stack.twilio.add_content("pedido_listo", PEDIDO)
        account_id = stack.database.scalar("SELECT id FROM accounts")
        response = stack.client.post(
            stack.server.url + "/api/whatsapp/templates/sync",
            headers={"Authorization": f"Bearer {STACK_ADMIN_TOKEN}"},
            params={"account_id": str(account_id)},
        )

        message = assert_error(response, 409, "twilio_not_configured")
        assert message.startswith("Twilio is not configured")
        assert stack.twilio.request_log == []


@sqlite_only
class TestCreate:
    def test_added_by_hand(self, api: Api) -> None:
        created = api.ok(
            api.post(
                "/api/whatsapp/templates",
                {
                    "sid": MANUAL_SID,
                    "name": "pedido_listo",
                    "body": PEDIDO,
                    "variables": {"1": "Ana", "2": "A-1043"},
                },
            ),
            201,
        )

        assert created["sid"] == MANUAL_SID
        assert created["language"] == "es"
        assert created["approval"] == "approved"
        assert created["source"] == "manual"
        assert created["sendable"] is True
        assert created["variables"] == ["1", "2"]
        assert created["synced_at"] is None
        [listed] = api.ok(api.get("/api/whatsapp/templates"))["items"]
        assert listed == created

    def test_pending_is_not_sendable_on_whatsapp(self, api: Api) -> None:
        body = {"sid": MANUAL_SID, "name": "cita", "body": CITA, "approval": "pending"}

        created = api.ok(api.post("/api/whatsapp/templates", body), 201)

        assert created["sendable"] is False
        assert api.ok(api.get("/api/whatsapp/templates", sendable="true")) == {"items": []}

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"sid": "HX123", "name": "x", "body": "Hola"}, "sid"),
            ({"sid": "MG" + "0f" * 16, "name": "x", "body": "Hola"}, "sid"),
            ({"sid": MANUAL_SID, "name": "", "body": "Hola"}, "name"),
            ({"sid": MANUAL_SID, "name": "x", "body": ""}, "body"),
            ({"sid": MANUAL_SID, "name": "x", "body": "Hola", "approval": "ok"}, "approval"),
            ({"sid": MANUAL_SID, "name": "x", "body": "Hola", "source": "twilio"}, "source"),
            ({"sid": MANUAL_SID, "name": "   ", "body": "Hola"}, "name"),
            ({"sid": MANUAL_SID, "name": "x", "body": "Hola\x00"}, "body"),
            ({"sid": MANUAL_SID, "name": "x", "body": "Hola", "language": "español"}, "language"),
            (
                {"sid": MANUAL_SID, "name": "x", "body": "Hola", "variables": {"a b": "x"}},
                "variables.a b.[key]",
            ),
            (
                {"sid": MANUAL_SID, "name": "x", "body": "Hola", "variables": {"1": "\x00"}},
                "variables",
            ),
        ],
    )
    def test_invalid_is_a_422(self, api: Api, body: dict[str, Any], field: str) -> None:
        response = api.post("/api/whatsapp/templates", body)

        assert_error(response, 422, "validation_error")
        assert field in [problem["field"] for problem in response.json()["error"]["fields"]]
        assert api.database.count("templates") == 0

    def test_duplicate_sid_is_a_409(self, api: Api) -> None:
        body = {"sid": MANUAL_SID, "name": "pedido_listo", "body": PEDIDO}
        api.ok(api.post("/api/whatsapp/templates", body), 201)

        message = assert_error(api.post("/api/sms/templates", body), 409, "conflict")

        assert MANUAL_SID in message
        assert api.database.count("templates") == 1

    def test_same_sid_in_another_account(self, api: Api) -> None:
        body = {"sid": MANUAL_SID, "name": "pedido_listo", "body": PEDIDO}
        api.ok(api.post("/api/whatsapp/templates", body), 201)

        api.ok(api.post("/api/whatsapp/templates", body, token=api.b.key), 201)

        assert api.database.count("templates") == 2


@sqlite_only
class TestDelete:
    def test_deleted(self, api: Api) -> None:
        body = {"sid": MANUAL_SID, "name": "pedido_listo", "body": PEDIDO}
        created = api.ok(api.post("/api/whatsapp/templates", body), 201)

        response = api.call("DELETE", f"/api/whatsapp/templates/{created['id']}")

        assert response.status_code == 204
        assert response.content == b""
        assert api.ok(api.get("/api/whatsapp/templates")) == {"items": []}

    def test_another_accounts_is_a_404(self, api: Api) -> None:
        body = {"sid": MANUAL_SID, "name": "pedido_listo", "body": PEDIDO}
        theirs = api.ok(api.post("/api/whatsapp/templates", body, token=api.b.key), 201)

        response = api.call("DELETE", f"/api/whatsapp/templates/{theirs['id']}")

        assert str(theirs["id"]) in assert_error(response, 404, "not_found")
        assert api.database.count("templates") == 1
        assert api.ok(api.get("/api/whatsapp/templates")) == {"items": []}
        assert len(api.ok(api.get("/api/whatsapp/templates", token=api.b.key))["items"]) == 1


@sqlite_only
class TestAdmin:
    def test_must_name_the_account(self, api: Api) -> None:
        for method, path, body in [
            ("GET", "/api/whatsapp/templates", None),
            ("POST", "/api/whatsapp/templates/sync", None),
            ("POST", "/api/whatsapp/templates", {"sid": MANUAL_SID, "name": "x", "body": "Hola"}),
            ("DELETE", "/api/whatsapp/templates/1", None),
        ]:
            response = api.call(method, path, token=ADMIN_TOKEN, json=body)
            assert "account_id" in assert_error(response, 400, "bad_request"), (method, path)

    def test_acts_on_the_account_named(self, api: Api) -> None:
        seed(api)
        b = str(api.b.id)
        body = {"sid": MANUAL_SID, "name": "de_b", "body": "Hola"}

        created = api.call(
            "POST",
            "/api/whatsapp/templates",
            token=ADMIN_TOKEN,
            json=body,
            params={"account_id": b},
        )
        listed = api.call(
            "GET", "/api/whatsapp/templates", token=ADMIN_TOKEN, params={"account_id": b}
        )

        assert created.status_code == 201, created.text
        assert [item["name"] for item in api.ok(listed)["items"]] == ["de_b"]
        assert len(api.ok(api.get("/api/whatsapp/templates"))["items"]) == 3
