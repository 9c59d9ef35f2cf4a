"""The dashboard in Spanish and English in Debian's Chromium (Playwright): a Spanish browser gets
Spanish pages, the header's switch turns them English and the choice sticks. With the fake
OpenAI answering Spanish customers in Spanish.

The screenshots go to tests/artifacts/ like the other browser tests'; with
PLATICA_DOCS_SCREENSHOTS=1 they also replace docs/dashboard-es.png and docs/dashboard-en.png
(the README's), so the docs are regenerated on demand, never on an ordinary test run."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.dashboard import test_dashboard
from tests.dashboard.test_dashboard import ARTIFACTS, Dashboard
from tests.polling import wait_for

# The browser tests' fixtures: Debian's Chromium, fast polling, fakes behind a live server.
browser = test_dashboard.browser
_fast_polling = test_dashboard._fast_polling
dashboard = test_dashboard.dashboard

DOCS = Path(__file__).resolve().parents[2] / "docs"
LUCIA = "+34600111222"
JORGE = "+5215512345678"
ANSWERS = {
    "tres leches": "¡Hola, Lucía! Sí, la tarta de tres leches está disponible el sábado. "
    "¿Para cuántas personas la quieres?",
    "12 personas": "Para 12 personas es la grande: 38 €. Puedes recogerla desde las 10:00 "
    "o te la llevamos a domicilio por 4 € más.",
    "domingo": "Sí, el domingo abrimos de 9:00 a 14:00.",
}


def answer_in_spanish(messages: list[dict[str, Any]]) -> str:
    """The fake OpenAI's reply: what a bakery's assistant would say to the last message."""
    last = str(messages[-1].get("content", ""))
    for clue, answer in ANSWERS.items():
        if clue in last:
            return answer
    return "¡Gracias por escribirnos! Enseguida te ayudamos."


def converse(dashboard: Dashboard, channel: str, sender: str, *bodies: str) -> None:
    """The contact writes each body once the reply to the previous one has gone out."""
    for body in bodies:
        dashboard.send(channel, body=body, sender=sender)
        wait_for(dashboard.settled, f"the reply to {body!r}")


def log_in_in_spanish(dashboard: Dashboard, page: Page) -> None:
    page.goto("/login")
    expect(page.locator("html")).to_have_attribute("lang", "es")
    page.get_by_label("Clave de API o token de administración").fill(dashboard.key)
    page.get_by_role("button", name="Iniciar sesión").click()
    expect(page.get_by_role("heading", name="Bandeja de entrada", exact=True)).to_be_visible()


def keep(page: Page, name: str, *, docs: bool = False) -> None:
    """A screenshot in tests/artifacts/; a `docs` one in docs/ too when
    PLATICA_DOCS_SCREENSHOTS=1."""
    Dashboard.shot(page, name)
    if docs and os.environ.get("PLATICA_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(ARTIFACTS / f"{name}.png", DOCS / f"{name}.png")


class TestLanguages:
    def test_spanish_browser_then_the_switch_to_english(self, dashboard):
        assert dashboard.openai is not None
        dashboard.openai.reply = answer_in_spanish
        converse(dashboard, "sms", JORGE, "Buenas, ¿abren el domingo?")
        converse(
            dashboard,
            "whatsapp",
            LUCIA,
            "Hola, ¿tienen la tarta de tres leches para el sábado?",
            "Para 12 personas, ¿cuánto cuesta?",
        )

        page = dashboard.page(locale="es-ES")
        log_in_in_spanish(dashboard, page)
        rows = page.locator(".conversation-row")
        expect(rows).to_have_count(2)
        expect(rows.first).to_contain_text("Activa")
        nav = page.get_by_role("navigation", name="Principal")
        expect(nav.get_by_role("link", name="Difusiones")).to_be_visible()
        keep(page, "inbox-es")

        rows.first.get_by_role("link").click()
        expect(page.get_by_label("Responder a mano")).to_be_visible()
        expect(page.get_by_text("Ventana de respuesta: quedan")).to_be_visible()
        # app.js writes the countdown in the page's words too.
        expect(page.locator("time[data-countdown]")).to_have_text(re.compile(r"^23 h 5\d min$"))
        expect(page.get_by_text("Para 12 personas es la grande: 38 €.")).to_be_visible()
        expect(page.get_by_text("Entregado").first).to_be_visible()
        expect(page.get_by_role("button", name="Tomar el control (pausar la IA)")).to_be_visible()
        conversation = page.url
        keep(page, "dashboard-es", docs=True)

        page.get_by_role("navigation", name="Idioma").get_by_role("link", name="English").click()
        expect(page).to_have_url(conversation)
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.get_by_label("Reply by hand")).to_be_visible()
        expect(page.get_by_text("Reply window:")).to_be_visible()
        expect(page.get_by_role("button", name="Hand off (pause the AI)")).to_be_visible()
        expect(page.get_by_text("Delivered").first).to_be_visible()
        keep(page, "dashboard-en", docs=True)

        # The choice sticks, whatever the browser asks for.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox").click()
        expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()
        cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
        assert cookies["platica_lang"] == "en"
