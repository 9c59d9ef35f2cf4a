"""The fixed texts through PUT /api/{channel}/config: built in, in the channel's language, until
edited; what is edited shows in `customized`, is used on the next message, and null or "" puts
the built-in text back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from platica.models import utcnow
from platica.texts import BUILT_IN, TEXT_NAMES, built_in
from tests.api.conftest import Api
from tests.factories import CONTACT
from tests.polling import wait_for

OPT_OUT = "Hecho: no te escribiremos más. Si cambias de idea, responde START."


def whatsapp_bodies(api: Api) -> list[str]:
    return [m["body"] for m in api.sent_to(CONTACT)]


class TestBuiltInTexts:
    def test_a_new_channel_has_the_spanish_texts_none_customized(self, api):
        body = api.ok(api.get("/api/whatsapp/config"))

        assert body["language"] == "es"
        assert {name: body[name] for name in TEXT_NAMES} == BUILT_IN["es"]
        assert body["customized"] == []

    def test_english_follows_the_language_for_every_text_not_edited(self, api):
        api.ok(api.put("/api/whatsapp/config", {"help_message": "Escribe tu pregunta."}))

        body = api.ok(api.put("/api/whatsapp/config", {"language": "en"}))

        assert body["help_message"] == "Escribe tu pregunta."
        assert body["opt_out_message"] == built_in("en", "opt_out_message")
        assert body["system_prompt"] == built_in("en", "system_prompt")
        assert body["customized"] == ["help_message"]
        # The other channel keeps its own language.
        sms = api.ok(api.get("/api/sms/config"))
        assert sms["opt_out_message"] == built_in("es", "opt_out_message")


class TestEditingTexts:
    def test_an_edited_text_is_stored_and_named_customized(self, api):
        body = api.ok(
            api.put(
                "/api/whatsapp/config",
                {"opt_out_message": OPT_OUT, "handoff_message": "Ya te atiende Lola."},
            )
        )

        assert (body["opt_out_message"], body["handoff_message"]) == (
            OPT_OUT,
            "Ya te atiende Lola.",
        )
        assert body["customized"] == ["opt_out_message", "handoff_message"]
        assert api.ok(api.get("/api/whatsapp/config")) == body

    @pytest.mark.parametrize("reset", [None, "", "   \n"])
    def test_null_or_empty_puts_the_built_in_text_back(self, api, reset):
        api.ok(api.put("/api/whatsapp/config", {"opt_out_message": OPT_OUT}))

        body = api.ok(api.put("/api/whatsapp/config", {"opt_out_message": reset}))

        assert body["opt_out_message"] == built_in("es", "opt_out_message")
        assert body["customized"] == []
        stored = api.database.scalar("SELECT opt_out_message FROM channel_configs LIMIT 1")
        assert stored is None

    def test_the_system_prompt_resets_to_the_built_in_one(self, api):
        api.ok(api.put("/api/sms/config", {"system_prompt": "Eres el asistente de Lola."}))
        body = api.ok(api.put("/api/sms/config", {"system_prompt": None}))

        assert body["system_prompt"] == built_in("es", "system_prompt")
        api.send("sms", body="Hola")
        wait_for(lambda: api.settled() and api.twilio.sent, "the answer")
        system = api.openai.requests[-1]["messages"][0]["content"]
        assert system.startswith(built_in("es", "system_prompt"))

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("opt_out_message", "x" * 1601),
            ("opt_in_message", "x" * 1601),
            ("handoff_message", "x" * 1601),
            ("offline_message", 42),
            ("system_prompt", "x" * 8001),
            ("help_message", "Hola\x00"),
        ],
    )
    def test_a_bad_text_is_422_naming_it_and_changes_nothing(self, api, name, value):
        before = api.ok(api.get("/api/whatsapp/config"))

        response = api.put("/api/whatsapp/config", {name: value, "busy_message": "Vuelvo pronto."})

        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert name in error["message"]
        assert [problem["field"] for problem in error["fields"]] == [name]
        assert api.ok(api.get("/api/whatsapp/config")) == before

    def test_an_edited_confirmation_is_sent_on_the_very_next_message(self, api):
        api.send("whatsapp", body="STOP")
        wait_for(lambda: api.settled() and whatsapp_bodies(api), "the first confirmation")
        api.send("whatsapp", body="START")
        wait_for(lambda: api.settled() and len(whatsapp_bodies(api)) == 2, "the opt-in")

        api.ok(api.put("/api/whatsapp/config", {"opt_out_message": OPT_OUT}))
        api.send("whatsapp", body="STOP")
        wait_for(lambda: api.settled() and len(whatsapp_bodies(api)) == 3, "the next one")

        assert whatsapp_bodies(api) == [
            built_in("es", "opt_out_message"),
            built_in("es", "opt_in_message"),
            OPT_OUT,
        ]


class TestHandoffNotice:
    def test_the_contact_waiting_is_told_once(self, api):
        api.ok(api.put("/api/whatsapp/config", {"handoff_message": "Ya te atiende Lola."}))
        api.send("whatsapp", body="Quiero hablar con una persona")
        wait_for(lambda: api.settled() and whatsapp_bodies(api), "the AI's answer")
        conversation = api.conversation_id(channel="whatsapp")

        api.ok(api.post(f"/api/whatsapp/conversations/{conversation}/handoff"))
        api.ok(api.post(f"/api/whatsapp/conversations/{conversation}/handoff"))

        wait_for(lambda: api.settled() and len(whatsapp_bodies(api)) == 2, "the notice")
        assert whatsapp_bodies(api) == [
            "Echo: Quiero hablar con una persona",
            "Ya te atiende Lola.",
        ]
        notices = api.database.rows(
            "SELECT author, reply_to_id FROM messages WHERE body = 'Ya te atiende Lola.'"
        )
        assert [tuple(row) for row in notices] == [("system", None)]

    def test_english_by_the_channels_language(self, api):
        api.ok(api.put("/api/sms/config", {"language": "en"}))
        api.send("sms", body="I want to talk to someone")
        wait_for(lambda: api.settled() and api.twilio.sent, "the AI's answer")
        conversation = api.conversation_id()

        api.ok(api.post(f"/api/sms/conversations/{conversation}/handoff"))

        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the notice")
        assert api.twilio.sent[1]["body"] == built_in("en", "handoff_message")

    def test_a_contact_who_wrote_over_a_day_ago_is_not_told(self, api):
        api.send("sms", body="Hola")
        wait_for(lambda: api.settled() and api.twilio.sent, "the AI's answer")
        conversation = api.conversation_id()
        api.database.execute(
            "UPDATE contacts SET last_inbound_at = :at", at=utcnow() - timedelta(hours=25)
        )

        api.ok(api.post(f"/api/sms/conversations/{conversation}/handoff"))

        assert api.database.scalar("SELECT count(*) FROM messages WHERE author = 'system'") == 0

    def test_a_contact_who_opted_out_is_not_told(self, api):
        api.send("whatsapp", body="STOP")
        wait_for(lambda: api.settled() and whatsapp_bodies(api), "the confirmation")
        conversation = api.conversation_id(channel="whatsapp")

        api.ok(api.post(f"/api/whatsapp/conversations/{conversation}/handoff"))

        assert api.database.scalar("SELECT count(*) FROM messages WHERE author = 'system'") == 1
        assert whatsapp_bodies(api) == [built_in("es", "opt_out_message")]
