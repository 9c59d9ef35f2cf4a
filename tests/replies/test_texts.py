"""The fixed texts customers get, in the channel's language or as the account edited them: the
lookup itself, and WhatsApp's confirmations through the real webhook and reply path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platica.models import ChannelConfig
from platica.texts import BUILT_IN, TEXT_NAMES, built_in, customized, is_built_in, text_for
from tests.polling import wait_for
from tests.stack import Stack, live_stack


@pytest.fixture
def stack(database_url, live_server) -> Iterator[Stack]:
    with live_stack(database_url, live_server) as created:
        yield created


def config(**values: object) -> ChannelConfig:
    return ChannelConfig(channel="whatsapp", phone_number="+14155238886", **values)


class TestTextFor:
    def test_every_text_is_built_in_in_spanish_and_english(self):
        for language in ("es", "en"):
            assert set(BUILT_IN[language]) == set(TEXT_NAMES)
            assert all(text.strip() for text in BUILT_IN[language].values())
        assert BUILT_IN["es"] != BUILT_IN["en"]

    def test_keywords_stay_twilios_in_every_language(self):
        for language in ("es", "en"):
            assert "START" in built_in(language, "opt_out_message")
            assert "STOP" in built_in(language, "opt_in_message")
            assert "STOP" in built_in(language, "help_message")

    @pytest.mark.parametrize("language", ["es", None, "fr"])
    def test_spanish_by_default(self, language):
        assert text_for(config(language=language), "help_message") == BUILT_IN["es"]["help_message"]

    def test_the_channels_language(self):
        assert text_for(config(language="en"), "opt_out_message") == (
            "You have been unsubscribed and will get no more messages. Reply START to resubscribe."
        )

    @pytest.mark.parametrize("blank", [None, "", "  \n"])
    def test_blank_is_the_built_in_text(self, blank):
        edited = config(language="es", fallback_message=blank)
        assert text_for(edited, "fallback_message") == built_in("es", "fallback_message")
        assert customized(edited) == []

    def test_an_edited_text_wins_in_any_language(self):
        edited = config(language="en", busy_message="Hoy no damos abasto.")
        assert text_for(edited, "busy_message") == "Hoy no damos abasto."
        assert customized(edited) == ["busy_message"]

    def test_a_built_in_text_is_recognised_in_either_language(self):
        assert is_built_in("help_message", built_in("en", "help_message"))
        assert is_built_in("help_message", built_in("es", "help_message") + "\n")
        assert not is_built_in("help_message", built_in("es", "opt_out_message"))


def confirmations(stack: Stack) -> list[str]:
    """STOP, START and HELP on WhatsApp, one at a time: the bodies Twilio was asked to send."""
    for count, keyword in enumerate(("STOP", "START", "HELP"), start=1):
        stack.send("whatsapp", body=keyword)

        def answered(count: int = count) -> bool:
            return stack.settled() and len(stack.twilio.sent) == count

        wait_for(answered, f"the answer to {keyword}")
    return [m["body"] for m in stack.twilio.sent]


class TestWhatsAppConfirmations:
    def test_a_spanish_channel_confirms_in_spanish(self, stack):
        assert confirmations(stack) == [
            "Listo, ya no recibirás más mensajes. Responde START para volver a suscribirte.",
            built_in("es", "opt_in_message"),
            built_in("es", "help_message"),
        ]
        assert stack.openai.requests == []

    def test_an_english_channel_confirms_in_english(self, stack):
        stack.configure(language="en")

        assert confirmations(stack) == [
            built_in("en", "opt_out_message"),
            "You are subscribed again. Reply STOP to unsubscribe.",
            built_in("en", "help_message"),
        ]

    def test_edited_texts_are_sent_in_place_of_the_built_in_ones(self, stack):
        stack.configure(
            opt_out_message="Hecho, no te escribiremos más. START para volver.",
            opt_in_message="¡Bienvenido de nuevo! STOP para salir.",
            help_message="Panadería Lola: escribe tu pedido. STOP para salir.",
        )

        assert confirmations(stack) == [
            "Hecho, no te escribiremos más. START para volver.",
            "¡Bienvenido de nuevo! STOP para salir.",
            "Panadería Lola: escribe tu pedido. STOP para salir.",
        ]

    def test_an_edit_takes_effect_on_the_next_message(self, stack):
        stack.send("whatsapp", body="HELP")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 1, "the help message")
        stack.configure(help_message="Nuevo horario: de 8 a 14. STOP para salir.")

        stack.send("whatsapp", body="INFO")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the new help message")

        assert [m["body"] for m in stack.twilio.sent] == [
            built_in("es", "help_message"),
            "Nuevo horario: de 8 a 14. STOP para salir.",
        ]

    def test_the_system_prompt_is_the_built_in_one_in_the_channels_language(self, stack):
        stack.configure(language="en")
        stack.send("whatsapp", body="Hello")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the answer")

        system = stack.openai.requests[-1]["messages"][0]["content"]
        assert system.startswith(built_in("en", "system_prompt"))
