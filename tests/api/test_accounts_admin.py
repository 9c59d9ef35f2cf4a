"""/api/accounts, for the admin token only: list, read, rename, change numbers, delete."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import Channel
from tests.api.conftest import ADMIN_TOKEN, Api
from tests.api.test_fuzz import budget
from tests.conftest import make_settings, sqlite_only
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER, inbound_form, post_signed
from tests.polling import wait_for
from tests.records import add_account, in_session
from tests.test_accounts_manage import rows_of, seed_account

LUNA_SMS = "+5215511112222"
LUNA_WHATSAPP = "+5215533334444"
LUNA_CONTACT = "+5215577776666"


def luna(api: Api) -> uuid.UUID:
    """A second account, Tortillería Luna, with a row in every table holding an account's."""

    async def seed(session: AsyncSession) -> uuid.UUID:
        numbers = {Channel.sms: LUNA_SMS, Channel.whatsapp: LUNA_WHATSAPP}
        return await seed_account(session, "Tortillería Luna", numbers)

    return in_session(api.database_url, seed)


def patch(api: Api, account_id: object, body: object) -> httpx.Response:
    return api.call("PATCH", f"/api/accounts/{account_id}", token=ADMIN_TOKEN, json=body)


def error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, (response.status_code, response.text)
    found: dict[str, str] = response.json()["error"]
    return found


class TestAdminOnly:
    def test_an_accounts_key_is_forbidden(self, api: Api):
        for method in ("GET", "PATCH", "DELETE"):
            path = "/api/accounts" if method == "GET" else f"/api/accounts/{api.a.id}"
            response = api.call(method, path, json={"name": "Mía"})

            found = error(response, 403)
            assert found["code"] == "forbidden"
            assert "PLATICA_ADMIN_TOKEN" in found["message"]
        assert api.database.scalar("SELECT count(*) FROM accounts WHERE name = 'Mía'") == 0

    def test_no_credentials(self, api: Api):
        assert api.get("/api/accounts", token=None).status_code == 401


class TestList:
    def test_every_account_with_its_numbers(self, api: Api):
        luna_id = luna(api)

        listed = api.ok(api.get("/api/accounts", token=ADMIN_TOKEN))

        assert [(a["id"], a["sms_number"], a["whatsapp_number"]) for a in listed] == [
            (str(api.a.id), SMS_NUMBER, WHATSAPP_NUMBER),
            (str(luna_id), LUNA_SMS, LUNA_WHATSAPP),
        ]
        assert listed[1]["name"] == "Tortillería Luna"
        assert set(listed[1]) == {
            "id",
            "name",
            "created_at",
            "whatsapp_number",
            "sms_number",
            "retention_days",
        }

    def test_one(self, api: Api):
        luna_id = luna(api)

        found = api.ok(api.get(f"/api/accounts/{luna_id}", token=ADMIN_TOKEN))

        assert found["name"] == "Tortillería Luna"
        assert found["sms_number"] == LUNA_SMS

    def test_unknown(self, api: Api):
        missing = uuid.uuid4()

        found = error(api.get(f"/api/accounts/{missing}", token=ADMIN_TOKEN), 404)

        assert found == {"code": "account_not_found", "message": f"no account with id {missing}"}

    def test_not_an_id(self, api: Api):
        found = error(api.get("/api/accounts/panaderia", token=ADMIN_TOKEN), 422)

        assert found["code"] == "validation_error"
        assert found["message"].startswith("id: ")


class TestUpdate:
    def test_rename_and_new_numbers(self, api: Api):
        luna_id = luna(api)

        changed = api.ok(
            patch(
                api,
                luna_id,
                {"name": " Tortillería Luna Nueva ", "sms_number": "+5215599990000"},
            )
        )

        assert changed["name"] == "Tortillería Luna Nueva"
        assert changed["sms_number"] == "+5215599990000"
        assert changed["whatsapp_number"] == LUNA_WHATSAPP
        assert api.ok(api.get(f"/api/accounts/{luna_id}", token=ADMIN_TOKEN)) == changed

    def test_the_new_number_takes_messages_at_once(self, api: Api):
        luna_id = luna(api)
        api.ok(patch(api, luna_id, {"sms_number": "+5215599990000"}))

        api.send("sms", to="+5215599990000", body="Hola, ¿a qué hora abren?")
        old = post_signed(
            api.client, api.server.url, "/webhook/sms", inbound_form("sms", to=LUNA_SMS)
        )

        assert old.status_code == 404
        wait_for(lambda: api.sent_to(CONTACT) and api.settled(), "the reply from the new number")
        assert api.sent_to(CONTACT)[0]["from"] == "+5215599990000"
        assert (
            api.database.scalar(
                "SELECT count(*) FROM messages WHERE body = 'Hola, ¿a qué hora abren?'"
            )
            == 1
        )
        assert rows_of(api.database, luna_id)["messages"] == 4  # 2 seeded, the new one, its reply

    def test_null_removes_the_channel(self, api: Api):
        luna_id = luna(api)

        changed = api.ok(patch(api, luna_id, {"whatsapp_number": None}))

        assert changed["whatsapp_number"] is None
        assert changed["sms_number"] == LUNA_SMS
        assert rows_of(api.database, luna_id)["channel_configs"] == 1

    def test_number_of_another_account(self, api: Api):
        luna_id = luna(api)

        found = error(patch(api, luna_id, {"whatsapp_number": f"whatsapp:{WHATSAPP_NUMBER}"}), 409)

        assert found == {
            "code": "number_taken",
            "message": f"whatsapp number {WHATSAPP_NUMBER} already belongs to account"
            f" 'default' ({api.a.id})",
        }
        assert rows_of(api.database, luna_id)["channel_configs"] == 2

    def test_all_or_nothing(self, api: Api):
        luna_id = luna(api)

        error(patch(api, luna_id, {"name": "Luna", "sms_number": SMS_NUMBER}), 409)

        assert api.ok(api.get(f"/api/accounts/{luna_id}", token=ADMIN_TOKEN))["name"] == (
            "Tortillería Luna"
        )

    def test_name_of_another_account(self, api: Api):
        luna_id = luna(api)

        found = error(patch(api, luna_id, {"name": "default"}), 409)

        assert found == {
            "code": "account_name_taken",
            "message": f"account {api.a.id} is already named 'default'",
        }

    def test_a_number_the_settings_give_the_default_account(self, api: Api):
        found = error(patch(api, api.a.id, {"sms_number": "+5215599990000"}), 409)

        assert found["code"] == "number_kept_by_setting"
        assert "TWILIO_PHONE_NUMBER" in found["message"]

    @pytest.mark.parametrize(
        ("body", "field", "says"),
        [
            ({"sms_number": "5215599990000"}, "sms_number", "E.164"),
            ({"whatsapp_number": "+52 55 9999"}, "whatsapp_number", "E.164"),
            ({"sms_number": 5215599990000}, "sms_number", "string"),
            ({"name": ""}, "name", "at least 1 character"),
            ({"name": "x" * 201}, "name", "at most 200 characters"),
            ({"name": None}, "body", "name cannot be null"),
            ({"name": "Pan\x00dería"}, "name", "NUL"),
            ({"retention_days": 3}, "retention_days", "Extra inputs are not permitted"),
        ],
    )
    def test_invalid(self, api: Api, body, field, says):
        luna_id = luna(api)

        found = error(patch(api, luna_id, body), 422)

        assert found["code"] == "validation_error"
        assert found["message"].startswith(f"{field}: ")
        assert says in found["message"]

    def test_unknown(self, api: Api):
        found = error(patch(api, uuid.uuid4(), {"name": "Nube"}), 404)

        assert found["code"] == "account_not_found"


class TestDelete:
    def test_deletes_the_account_and_its_data_only(self, api: Api):
        luna_id = luna(api)
        kept = rows_of(api.database, api.a.id)
        assert all(rows_of(api.database, luna_id).values())

        deleted = api.ok(api.call("DELETE", f"/api/accounts/{luna_id}", token=ADMIN_TOKEN))

        assert deleted == {
            "id": str(luna_id),
            "name": "Tortillería Luna",
            "deleted": {
                "conversations": 1,
                "messages": 2,
                "contacts": 1,
                "media": 1,
                "api_keys": 1,
                "templates": 1,
                "broadcasts": 1,
                "webhook_logs": 1,
            },
        }
        assert set(rows_of(api.database, luna_id).values()) == {0}
        assert rows_of(api.database, api.a.id) == kept
        again = api.call("DELETE", f"/api/accounts/{luna_id}", token=ADMIN_TOKEN)
        assert error(again, 404)["code"] == "account_not_found"
        # Its numbers are free again.
        api.ok(patch(api, api.b.id, {"sms_number": LUNA_SMS}))

    def test_its_api_keys_stop_working(self, api: Api):
        key = api.b.key
        assert api.get("/api/sms/stats", token=key).status_code == 200

        api.ok(api.call("DELETE", f"/api/accounts/{api.b.id}", token=ADMIN_TOKEN))

        assert api.get("/api/sms/stats", token=key).status_code == 401

    def test_the_default_account_stays(self, api: Api):
        response = api.call("DELETE", f"/api/accounts/{api.a.id}", token=ADMIN_TOKEN)

        found = error(response, 409)
        assert found["code"] == "number_kept_by_setting"
        assert found["message"].startswith("cannot delete account 'default': ")
        assert api.database.scalar("SELECT count(*) FROM accounts") == 1


class TestBrowser:
    @sqlite_only
    def test_a_front_end_may_patch_and_delete(self, database_url, live_server):
        origin = "https://panel.panaderia.example"
        server = live_server(make_settings(database_url, CORS_ORIGINS=origin), worker=False)
        with httpx.Client(timeout=10) as client:
            for method in ("PATCH", "DELETE"):
                response = client.options(
                    f"{server.url}/api/accounts/{uuid.uuid4()}",
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": method,
                        "Access-Control-Request-Headers": "Authorization, Content-Type",
                    },
                )

                assert response.status_code == 200, (method, response.text)
                assert method in response.headers["access-control-allow-methods"]
                assert response.headers["access-control-allow-origin"] == origin


class TestDeleteWhileAnswering:
    def test_a_reply_in_flight_is_dropped_and_others_go_on(self, api: Api):
        luna_id = luna(api)
        api.openai.latency = 1.0
        api.send("sms", to=LUNA_SMS, body="¿Tienen tortillas de maíz?", sender=LUNA_CONTACT)
        wait_for(lambda: api.openai.in_flight == 1, "the LLM to be asked for Luna's reply")

        api.ok(api.call("DELETE", f"/api/accounts/{luna_id}", token=ADMIN_TOKEN))
        api.openai.latency = 0.0
        api.send("sms", body="¿Abren el domingo?")

        wait_for(
            lambda: api.sent_to(CONTACT) and api.settled() and api.openai.in_flight == 0,
            "the default account's reply, and Luna's LLM call to end",
        )
        assert api.sent_to(LUNA_CONTACT) == []
        assert set(rows_of(api.database, luna_id).values()) == {0}


class TestFuzz:
    def test_no_input_gets_a_server_error(self, api: Api, subtests: Any):
        """schemathesis over /api/accounts with the admin token, valid and invalid inputs, also
        on the accounts that exist (the PostgreSQL run catches what only it refuses, such as
        NUL in text)."""
        luna_id = luna(api)
        schema = schemathesis.openapi.from_url(api.server.url + "/openapi.json")
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            if result.ok().path.startswith("/api/accounts"):
                operations.append(result.ok())
        assert len(operations) == 4
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for operation in operations:
            strategies = [
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            ]
            if "{id}" in operation.path:
                strategies += [
                    operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"id": str(i)})
                    for i in (api.a.id, luna_id)
                ]

            @given(case=st.one_of(strategies))
            @settings(
                max_examples=budget(api, 30),
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def call(case: Any) -> None:
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    api.quiesce()  # see Api.quiesce
                case.validate_response(response, checks=[not_a_server_error], headers=headers)

            with subtests.test(operation.label):
                call()


class TestRace:
    def test_one_number_asked_for_by_several_accounts_at_once(self, api: Api):
        async def seed(session: AsyncSession) -> list[uuid.UUID]:
            made = [await add_account(session, f"Sucursal {n}") for n in range(6)]
            return [account.id for account in made]

        ids = in_session(api.database_url, seed)

        def claim(account_id: uuid.UUID) -> int:
            return patch(api, account_id, {"sms_number": "+5215500000000"}).status_code

        with ThreadPoolExecutor(len(ids)) as pool:
            statuses = sorted(pool.map(claim, ids))

        assert statuses == [200] + [409] * (len(ids) - 1)
        assert (
            api.database.scalar(
                "SELECT count(*) FROM channel_configs WHERE phone_number = '+5215500000000'"
            )
            == 1
        )
