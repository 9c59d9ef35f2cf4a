"""The settings page over plain HTTP: the media options (the customers' language, vision,
deleting Twilio's copy) are shown, saved and refused by the rules of PUT /api/{channel}/config,
their errors next to their fields."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest

from platica.texts import built_in
from tests.conftest import Database, LiveServer, make_settings
from tests.dashboard.client import DashboardClient
from tests.records import default_account_key

# Every field of a channel's form, as the page posts it (checkboxes only when ticked).
FORM = {
    "system_prompt": "Eres el asistente de la Panadería Lola. Sé breve.",
    "openai_model": "",
    "max_tokens": "300",
    "temperature": "0.7",
    "context_messages": "10",
    "debounce_seconds": "2",
    "sms_max_chars": "160",
    "fallback_message": "Perdón, ahora no podemos responder. Te escribimos pronto.",
    "help_message": "Soy el asistente automático. Responde STOP para no recibir mensajes.",
    "handoff_timeout_minutes": "60",
    "daily_token_budget": "",
    "busy_message": "Hoy no damos abasto; te respondemos mañana.",
    "language": "es",
    "ai_enabled": "on",
}


@pytest.fixture
def operator(database_url, live_server) -> Iterator[DashboardClient]:
    server: LiveServer = live_server(make_settings(database_url), worker=False)
    _account_id, key = default_account_key(database_url)
    client = DashboardClient(server)
    assert client.log_in(key).status_code == 303
    yield client
    client.close()


def section(page: str, channel: str) -> str:
    found = re.search(rf'<section class="panel" id="{channel}".*?</section>', page, re.DOTALL)
    assert found is not None, page
    return found[0]


def media_options(database: Database, channel: str) -> tuple[str, bool, bool]:
    row = database.rows(
        "SELECT language, vision, delete_media_after_use FROM channel_configs"
        " WHERE channel = :channel",
        channel=channel,
    )[0]
    return row.language, bool(row.vision), bool(row.delete_media_after_use)


class TestMediaOptions:
    def test_shown_with_their_defaults(self, operator):
        whatsapp = section(operator.http.get("/settings").text, "whatsapp")
        assert '<option value="es" selected>Spanish (es)</option>' in whatsapp
        assert '<option value="en">English (en)</option>' in whatsapp
        assert '<label for="cfg-whatsapp-language">Customers\' language</label>' in whatsapp
        for name in ("vision", "delete_media_after_use"):
            box = re.search(rf'<input id="cfg-whatsapp-{name}" [^>]*>', whatsapp)
            assert box is not None, name
            assert "checked" not in box[0], name
            assert f'aria-describedby="cfg-whatsapp-{name}-help"' in box[0], name

    def test_saved_and_cleared(self, operator, database):
        form = {**FORM, "language": "en", "vision": "on", "delete_media_after_use": "on"}
        response = operator.post_form("/settings/whatsapp", "/settings", form)
        assert response.status_code == 303, response.text
        assert media_options(database, "whatsapp") == ("en", True, True)
        assert media_options(database, "sms") == ("es", False, False)
        whatsapp = section(operator.http.get("/settings").text, "whatsapp")
        assert '<option value="en" selected>English (en)</option>' in whatsapp
        assert re.search(r'<input id="cfg-whatsapp-vision" [^>]*checked', whatsapp)

        # A box left unticked is not posted at all: off.
        response = operator.post_form("/settings/whatsapp", "/settings", {**FORM, "vision": "on"})
        assert response.status_code == 303, response.text
        assert media_options(database, "whatsapp") == ("es", True, False)

    def test_an_unknown_language_is_explained_next_to_its_field(self, operator, database):
        form = {**FORM, "language": "fr", "vision": "on"}
        response = operator.post_form("/settings/sms", "/settings", form)
        assert response.status_code == 422
        sms = html.unescape(section(response.text, "sms"))
        assert "Not saved: 1 field to fix, marked below." in sms
        assert "Customers' language: must be 'es' or 'en'" in sms
        select = re.search(r'<select id="cfg-sms-language"[^>]*>', sms)
        assert select is not None
        assert 'aria-invalid="true"' in select[0]
        assert "cfg-sms-language-error" in select[0]
        # What was ticked stays ticked, and nothing was saved.
        assert re.search(r'<input id="cfg-sms-vision" [^>]*checked', sms)
        assert media_options(database, "sms") == ("es", False, False)

    def test_a_form_without_the_language_keeps_it(self, operator, database):
        """A page opened before the field existed: the rest is saved, the language kept."""
        database.execute("UPDATE channel_configs SET language = 'en'")
        form = {name: value for name, value in FORM.items() if name != "language"}
        response = operator.post_form("/settings/sms", "/settings", {**form, "max_tokens": "42"})
        assert response.status_code == 303, response.text
        assert media_options(database, "sms") == ("en", False, False)
        assert database.scalar("SELECT max_tokens FROM channel_configs WHERE channel = 'sms'") == 42


def stored_texts(database: Database, channel: str) -> dict[str, str | None]:
    names = ("system_prompt", "help_message", "opt_out_message", "handoff_message")
    row = database.rows(
        f"SELECT {', '.join(names)} FROM channel_configs WHERE channel = :channel",
        channel=channel,
    )[0]
    return dict(zip(names, row, strict=True))


def textarea(page: str, channel: str, name: str) -> str:
    found = re.search(
        rf'<textarea id="cfg-{channel}-{name}"[^>]*>(.*?)</textarea>', page, re.DOTALL
    )
    assert found is not None, name
    return html.unescape(found[1])


class TestFixedTexts:
    def test_the_built_in_texts_are_shown_in_the_channels_language(self, operator, database):
        database.execute("UPDATE channel_configs SET language = 'en' WHERE channel = 'sms'")
        page = operator.http.get("/settings").text
        whatsapp, sms = section(page, "whatsapp"), section(page, "sms")

        assert textarea(whatsapp, "whatsapp", "opt_out_message") == built_in(
            "es", "opt_out_message"
        )
        assert textarea(whatsapp, "whatsapp", "handoff_message") == built_in(
            "es", "handoff_message"
        )
        assert textarea(sms, "sms", "help_message") == built_in("en", "help_message")
        assert "Built-in text, in the customers' language." in html.unescape(whatsapp)
        # Twilio answers STOP and START on SMS: no confirmations to edit there.
        assert "cfg-sms-opt_out_message" not in sms

    def test_posted_back_unchanged_they_stay_built_in(self, operator, database):
        page = operator.http.get("/settings").text
        whatsapp = section(page, "whatsapp")
        shown = {
            name: textarea(whatsapp, "whatsapp", name)
            for name in ("opt_out_message", "opt_in_message", "offline_message", "handoff_message")
        }
        form = {**FORM, **shown, "system_prompt": built_in("es", "system_prompt")}
        form["help_message"] = "Escribe tu pedido; STOP para salir."
        response = operator.post_form("/settings/whatsapp", "/settings", form)
        assert response.status_code == 303, response.text

        assert stored_texts(database, "whatsapp") == {
            "system_prompt": None,
            "help_message": "Escribe tu pedido; STOP para salir.",
            "opt_out_message": None,
            "handoff_message": None,
        }
        whatsapp = html.unescape(section(operator.http.get("/settings").text, "whatsapp"))
        assert "Customized: empty the box to go back to the built-in text." in whatsapp

    def test_an_emptied_box_goes_back_to_the_built_in_text(self, operator, database):
        database.execute(
            "UPDATE channel_configs SET opt_out_message = 'Hecho. START para volver.',"
            " system_prompt = 'Eres Lola.'"
        )
        form = {**FORM, "opt_out_message": "", "system_prompt": "  "}
        response = operator.post_form("/settings/whatsapp", "/settings", form)
        assert response.status_code == 303, response.text

        assert stored_texts(database, "whatsapp")["opt_out_message"] is None
        assert stored_texts(database, "whatsapp")["system_prompt"] is None
        # A form without the new texts (the SMS one, or a page opened before) keeps them.
        response = operator.post_form("/settings/sms", "/settings", FORM)
        assert response.status_code == 303, response.text
        assert stored_texts(database, "sms")["opt_out_message"] == "Hecho. START para volver."

    def test_a_text_too_long_is_explained_next_to_its_field(self, operator, database):
        form = {**FORM, "handoff_message": "x" * 1601}
        response = operator.post_form("/settings/whatsapp", "/settings", form)

        assert response.status_code == 422
        whatsapp = html.unescape(section(response.text, "whatsapp"))
        assert "Handoff notice: " in whatsapp
        assert "1600" in whatsapp
        assert stored_texts(database, "whatsapp")["handoff_message"] is None
