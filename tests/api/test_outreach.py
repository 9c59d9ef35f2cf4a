"""Messages Plática starts, end to end over real HTTP: proactive messages (free text and
templates, the Idempotency-Key), WhatsApp's 24-hour window, and broadcasts, against the fake
Twilio through the official SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import Template, TemplateApproval, utcnow
from tests.api.conftest import Api
from tests.conftest import sqlite_only
from tests.factories import CONTACT
from tests.polling import wait_for
from tests.records import in_session

REMINDER = "Hola {{1}}, le recordamos su cita del {{2}} en Clínica Dental Sonrisas."
OTHER = "+34600999888"


def add_template(
    api: Api,
    body: str = REMINDER,
    *,
    name: str = "recordatorio_cita",
    approval: TemplateApproval = TemplateApproval.approved,
    account_id: uuid.UUID | None = None,
) -> str:
    # Twilio has it too (its fake refuses an unknown ContentSid, as Twilio does).
    sid = api.twilio.add_content(name, body, approval=approval.value)

    async def add(session: AsyncSession) -> None:
        session.add(
            Template(
                account_id=account_id or api.a.id,
                sid=sid,
                name=name,
                language="es",
                body=body,
                variables={"1": "Ana", "2": "12/05"} if "{{2}}" in body else {},
                approval=approval,
                source="manual",
            )
        )

    in_session(api.database_url, add)
    return sid


def wrote_hours_ago(api: Api, hours: float, contact: str = CONTACT) -> None:
    """Move the contact's last message (and the conversation's messages) back in time."""
    api.database.execute(
        "UPDATE contacts SET last_inbound_at = :at WHERE address = :contact",
        at=utcnow() - timedelta(hours=hours),
        contact=contact,
    )


def message(api: Api, channel: str, body: dict[str, Any], **headers: str) -> Any:
    return api.call("POST", f"/api/{channel}/messages", json=body, headers=headers)


def settled(api: Api) -> bool:
    return bool(api.settled())


def sent_params(api: Api, number: str) -> list[dict[str, list[str]]]:
    return [m["params"] for m in api.sent_to(number)]


class TestProactiveMessages:
    def test_a_text_to_a_new_sms_contact_opens_a_conversation_and_its_answer_gets_the_ai(
        self, api: Api
    ) -> None:
        text = "Hola, su pedido 1042 está listo para recoger en la tienda de Gran Vía."
        created = api.ok(message(api, "sms", {"to": OTHER, "body": text}), 202)

        assert created["author"] == "operator"
        assert created["status"] == "pending"
        wait_for(lambda: api.bodies_sent_to(OTHER) == [text], "the message sent")
        conversation_id = created["conversation_id"]
        history = api.ok(api.get(f"/api/sms/conversations/{conversation_id}/history"))
        assert history["conversation"]["contact"] == OTHER
        assert history["conversation"]["ai_enabled"] is True  # not a handoff
        assert history["conversation"]["window_closes_at"] is None  # SMS has no window

        api.send("sms", sender=OTHER, body="¿Hasta qué hora puedo pasar?")
        wait_for(lambda: len(api.sent_to(OTHER)) == 2 and api.settled(), "the AI's answer")
        [request] = api.openai.requests
        roles = [(m["role"], m["content"]) for m in request["messages"][1:]]
        # The model knows what the customer is answering.
        assert roles == [("assistant", text), ("user", "¿Hasta qué hora puedo pasar?")]

    @sqlite_only
    def test_free_text_to_a_whatsapp_contact_who_never_wrote_is_refused(self, api: Api) -> None:
        response = message(api, "whatsapp", {"to": OTHER, "body": "Hola"})

        assert response.status_code == 409
        assert "template" in response.json()["error"]["message"]
        assert api.twilio.sent == []
        assert api.database.scalar("SELECT count(*) FROM messages") == 0

    @sqlite_only
    def test_an_opted_out_contact_is_refused(self, api: Api) -> None:
        api.send("sms", body="STOP")
        wait_for(api.settled, "STOP recorded")

        response = message(api, "sms", {"to": CONTACT, "body": "Oferta de temporada"})

        assert response.status_code == 409
        assert "opted out" in response.json()["error"]["message"]
        assert api.twilio.sent == []

    @sqlite_only
    def test_bad_input_is_a_clear_error(self, api: Api) -> None:
        cases: list[tuple[dict[str, Any], int]] = [
            ({"to": "600111222", "body": "Hola"}, 422),
            ({"to": OTHER}, 422),
            ({"to": OTHER, "body": "Hola", "template": "x"}, 422),
            ({"to": OTHER, "body": "Hola", "variables": {"1": "Ana"}}, 422),
            ({"to": OTHER, "body": "Hola", "extra": 1}, 422),
            ({"to": OTHER, "template": "cita\u0000", "variables": {"1": "Ana"}}, 422),
            ({"to": OTHER, "template": "cita", "variables": {"1": "A\u0000na"}}, 422),
        ]
        for body, status in cases:
            response = message(api, "sms", body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["message"]
        assert api.database.scalar("SELECT count(*) FROM messages") == 0

    def test_the_same_idempotency_key_sends_once_and_answers_the_same(self, api: Api) -> None:
        body = {"to": OTHER, "body": "Su cita es mañana a las 10:30."}
        first = message(api, "sms", body, **{"Idempotency-Key": "cita-7781"})
        second = message(api, "sms", body, **{"Idempotency-Key": "cita-7781"})

        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert second.headers["Idempotent-Replayed"] == "true"
        wait_for(lambda: api.sent_to(OTHER) and api.settled(), "the message sent")
        assert len(api.sent_to(OTHER)) == 1
        assert api.database.scalar("SELECT count(*) FROM messages") == 1

        other = message(
            api, "sms", {**body, "body": "Otro texto"}, **{"Idempotency-Key": "cita-7781"}
        )
        assert other.status_code == 422
        assert "Idempotency-Key" in other.json()["error"]["message"]
        # Another account's key space is its own.
        theirs = api.call(
            "POST",
            "/api/sms/messages",
            json=body,
            headers={"Idempotency-Key": "cita-7781"},
            token=api.b.key,
        )
        assert theirs.status_code == 202
        assert theirs.json()["id"] != first.json()["id"]


class TestWhatsAppWindow:
    def test_after_25_hours_free_text_is_refused_and_a_template_goes_out(self, api: Api) -> None:
        api.send("whatsapp", body="Hola, quería pedir cita")
        wait_for(lambda: api.sent_to(CONTACT) and api.settled(), "the first answer")
        conversation_id = api.conversation_id(channel="whatsapp")
        wrote_hours_ago(api, 25)
        before = len(api.twilio.attempts)

        view = api.ok(api.get(f"/api/whatsapp/conversations/{conversation_id}/history"))
        assert view["conversation"]["window_closes_at"] < utcnow().isoformat()
        manual = api.post(
            f"/api/whatsapp/conversations/{conversation_id}/messages", {"body": "¿Sigue ahí?"}
        )
        assert manual.status_code == 409
        assert "24 hours" in manual.json()["error"]["message"]
        free = message(api, "whatsapp", {"to": CONTACT, "body": "¿Sigue ahí?"})
        assert free.status_code == 409
        assert "template" in free.json()["error"]["message"]

        sid = add_template(api)
        missing = message(
            api,
            "whatsapp",
            {"to": CONTACT, "template": "recordatorio_cita", "variables": {"1": "Ana"}},
        )
        assert missing.status_code == 422
        assert "{{2}}" in missing.json()["error"]["message"]
        assert len(api.twilio.attempts) == before  # nothing reached Twilio

        sent = api.ok(
            message(
                api,
                "whatsapp",
                {"to": CONTACT, "template": sid, "variables": {"1": "Ana", "2": "12 de mayo"}},
            ),
            202,
        )
        assert sent["body"] == (
            "Hola Ana, le recordamos su cita del 12 de mayo en Clínica Dental Sonrisas."
        )
        assert sent["content_sid"] == sid
        assert sent["conversation_id"] == conversation_id  # continues the conversation
        wait_for(lambda: len(api.sent_to(CONTACT)) == 2 and api.settled(), "the template sent")
        params = sent_params(api, CONTACT)[-1]
        assert params["ContentSid"] == [sid]
        assert json.loads(params["ContentVariables"][0]) == {"1": "Ana", "2": "12 de mayo"}
        assert "Body" not in params

    @sqlite_only
    def test_a_handoff_resumed_after_the_window_closed_is_not_sent(self, api: Api) -> None:
        api.send("whatsapp", body="Hola")
        wait_for(lambda: api.sent_to(CONTACT) and api.settled(), "the first answer")
        conversation_id = api.conversation_id(channel="whatsapp")
        api.ok(api.post(f"/api/whatsapp/conversations/{conversation_id}/handoff"))
        wait_for(lambda: len(api.twilio.sent) == 2, "the handoff notice")
        api.send("whatsapp", body="¿Me pueden llamar?")
        wait_for(
            lambda: api.reply_states(conversation_id) == ["answered", "pending"],
            "the message waiting for the operator",
        )
        wrote_hours_ago(api, 25)
        before = len(api.twilio.attempts)

        api.ok(api.post(f"/api/whatsapp/conversations/{conversation_id}/resume"))

        wait_for(api.settled, "the AI's reply settled")
        reply = api.outbound()[-1]
        assert reply.status == "failed"
        assert reply.error_code == 63016
        assert "24 hours" in reply.error_message
        assert len(api.twilio.attempts) == before  # refused before Twilio was called

    @sqlite_only
    def test_63016_from_twilio_is_recorded_and_not_retried(self, api: Api) -> None:
        api.twilio.fail_next("63016")
        api.send("whatsapp", body="Hola")

        wait_for(lambda: api.settled() and api.twilio.attempts, "the reply settled")
        [reply] = api.outbound()
        assert reply.status == "failed"
        assert reply.error_code == 63016
        assert len(api.twilio.attempts) == 1

    @sqlite_only
    def test_an_unapproved_template_cannot_be_sent_on_whatsapp(self, api: Api) -> None:
        add_template(api, "Hola {{1}}", name="promo", approval=TemplateApproval.pending)

        response = message(
            api, "whatsapp", {"to": OTHER, "template": "promo", "variables": {"1": "Ana"}}
        )

        assert response.status_code == 422
        assert "not approved" in response.json()["error"]["message"]
        # On SMS the same template may go.
        sms = message(api, "sms", {"to": OTHER, "template": "promo", "variables": {"1": "Ana"}})
        assert sms.status_code == 202, sms.text


def broadcast(api: Api, channel: str, body: dict[str, Any]) -> Any:
    return api.ok(api.post(f"/api/{channel}/broadcasts", body), 202)


def progress(api: Api, channel: str, broadcast_id: int) -> Any:
    return api.ok(api.get(f"/api/{channel}/broadcasts/{broadcast_id}"))


class TestBroadcasts:
    def test_each_recipient_once_skipping_opted_out_invalid_and_repeated(self, api: Api) -> None:
        api.configure(broadcast_mps=50)
        api.send("whatsapp", sender="+34600000003", body="STOP")
        wait_for(api.settled, "STOP recorded")
        sid = add_template(api)
        recipients = [
            {"to": "+34600000001", "variables": {"1": "Ana"}},
            {"to": "+34 600 000 002", "variables": {"1": "Luis"}},
            {"to": "+34600000003", "variables": {"1": "Marta"}},  # opted out
            {"to": "600-000", "variables": {"1": "Sin número"}},  # invalid
            {"to": "+34600000001", "variables": {"1": "Ana otra vez"}},  # repeated
        ]

        created = broadcast(
            api,
            "whatsapp",
            {"template": sid, "variables": {"2": "lunes"}, "recipients": recipients},
        )
        assert created["total"] == 5
        assert created["mps"] == 50
        sent_before = counted("whatsapp", "broadcast", "sent")
        done = wait_for(
            lambda: (
                (p := progress(api, "whatsapp", created["id"]))["status"] == "done"
                and p["queued"] == 0
                and api.settled()
                and p
            ),
            "the broadcast done",
        )

        assert sorted(m["to"] for m in api.twilio.sent if "ContentSid" in m["params"]) == [
            f"whatsapp:{n}" for n in ("+34600000001", "+34600000002")
        ]
        assert done["skipped"] == 3
        assert counted("whatsapp", "broadcast", "sent") - sent_before == 2
        assert set(done["skip_reasons"]) == {
            "not a phone number in E.164 form (+ country code and number)",
            "listed more than once: sent once",
            "the contact has opted out (STOP); nothing can be sent to them until they write START",
        }
        wait_for(
            lambda: progress(api, "whatsapp", created["id"])["delivered"] == 2,
            "the delivery reports",
        )
        bodies = api.database.rows(
            "SELECT body, author FROM messages WHERE author = 'broadcast' ORDER BY id"
        )
        assert [row.body for row in bodies] == [
            "Hola Ana, le recordamos su cita del lunes en Clínica Dental Sonrisas.",
            "Hola Luis, le recordamos su cita del lunes en Clínica Dental Sonrisas.",
        ]

    def test_an_answer_continues_the_conversation_with_the_template_in_context(
        self, api: Api
    ) -> None:
        api.configure(broadcast_mps=50)
        sid = add_template(api, "Hola {{1}}, ¿confirma su cita de mañana?", name="confirmar")
        created = broadcast(
            api,
            "sms",
            {"template": sid, "recipients": [{"to": OTHER, "variables": {"1": "Ana"}}]},
        )
        wait_for(lambda: api.sent_to(OTHER) and api.settled(), "the broadcast sent")

        api.send("sms", sender=OTHER, body="Sí, confirmo")
        wait_for(lambda: len(api.sent_to(OTHER)) == 2 and api.settled(), "the AI's answer")

        [request] = api.openai.requests
        assert request["messages"][1:] == [
            {"role": "assistant", "content": "Hola Ana, ¿confirma su cita de mañana?"},
            {"role": "user", "content": "Sí, confirmo"},
        ]
        assert progress(api, "sms", created["id"])["total"] == 1

    def test_stop_in_answer_to_a_broadcast_opts_out_and_the_next_one_skips_them(
        self, api: Api
    ) -> None:
        api.configure(broadcast_mps=50)
        first = broadcast(api, "sms", {"body": "Rebajas hasta el domingo", "recipients": [OTHER]})
        wait_for(lambda: api.sent_to(OTHER) and api.settled(), "the broadcast sent")
        api.send("sms", sender=OTHER, body="STOP")
        wait_for(api.settled, "STOP recorded")

        second = broadcast(api, "sms", {"body": "Última semana de rebajas", "recipients": [OTHER]})
        done = wait_for(
            lambda: (p := progress(api, "sms", second["id"]))["status"] == "done" and p,
            "the second broadcast done",
        )

        assert done["skipped"] == 1
        assert api.bodies_sent_to(OTHER) == ["Rebajas hasta el domingo"]
        assert first["id"] != second["id"]

    @sqlite_only
    def test_a_canceled_broadcast_sends_no_more(self, api: Api) -> None:
        api.configure(broadcast_mps=1)
        numbers = [f"+346000001{n:02d}" for n in range(20)]
        created = broadcast(api, "sms", {"body": "Aviso: cerramos el lunes", "recipients": numbers})
        wait_for(lambda: api.twilio.sent, "the first message")

        canceled = api.ok(api.post(f"/api/sms/broadcasts/{created['id']}/cancel"))

        assert canceled["status"] == "canceled"
        assert canceled["canceled"] >= 15
        wait_for(api.settled, "what was handed over sent")
        sent = len(api.twilio.sent)
        assert sent + canceled["canceled"] == 20
        again = api.ok(api.post(f"/api/sms/broadcasts/{created['id']}/cancel"))
        assert again["canceled"] == canceled["canceled"]  # idempotent

    @sqlite_only
    def test_a_missing_variable_refuses_the_whole_broadcast(self, api: Api) -> None:
        sid = add_template(api)
        response = api.post(
            "/api/whatsapp/broadcasts",
            {
                "template": sid,
                "recipients": [
                    {"to": "+34600000001", "variables": {"1": "Ana", "2": "lunes"}},
                    {"to": "+34600000002", "variables": {"1": "Luis"}},
                ],
            },
        )

        assert response.status_code == 422
        assert "recipients[1]" in response.json()["error"]["message"]
        assert "{{2}}" in response.json()["error"]["message"]
        assert api.database.scalar("SELECT count(*) FROM broadcasts") == 0

    @sqlite_only
    def test_another_accounts_broadcast_is_not_found(self, api: Api) -> None:
        created = broadcast(api, "sms", {"body": "Hola", "recipients": [OTHER]})

        theirs = api.get(f"/api/sms/broadcasts/{created['id']}", token=api.b.key)
        cancel = api.call("POST", f"/api/sms/broadcasts/{created['id']}/cancel", token=api.b.key)

        assert theirs.status_code == 404
        assert cancel.status_code == 404
        assert api.ok(api.get("/api/sms/broadcasts", token=api.b.key)) == []

    @sqlite_only
    def test_too_many_recipients_is_refused(self, api: Api) -> None:
        response = api.post(
            "/api/sms/broadcasts",
            {"body": "Hola", "recipients": [f"+3460{n:07d}" for n in range(10_001)]},
        )
        assert response.status_code == 422
        assert api.database.scalar("SELECT count(*) FROM broadcasts") == 0
        nul = api.post(
            "/api/sms/broadcasts", {"name": "a\u0000", "body": "Hola", "recipients": [OTHER]}
        )
        assert nul.status_code == 422
        assert "NUL" in nul.text


def counted(channel: str, origin: str, outcome: str) -> float:
    labels = {"channel": channel, "origin": origin, "outcome": outcome}
    return REGISTRY.get_sample_value("platica_outreach_messages_total", labels) or 0.0


@sqlite_only
@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_config_shows_and_changes_the_broadcast_pace(api: Api, channel: str) -> None:
    config = api.ok(api.get(f"/api/{channel}/config"))
    assert config["broadcast_mps"] == (20 if channel == "whatsapp" else 1)

    changed = api.ok(api.put(f"/api/{channel}/config", {"broadcast_mps": 3.5}))
    assert changed["broadcast_mps"] == 3.5
    assert api.put(f"/api/{channel}/config", {"broadcast_mps": 0}).status_code == 422
