"""The dashboard in Spanish and English: the catalogs (complete, up to date with the sources), the
choice of language (cookie, then Accept-Language, then Spanish), the switch and its redirect,
over plain HTTP against a live server."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from platica.dashboard import display, i18n
from platica.dashboard.recipients import RecipientsError, parse_csv
from platica.models import utcnow
from tests.conftest import Database, LiveServer, make_settings
from tests.dashboard.client import DashboardClient
from tests.dashboard.inbox_data import Seed, default_account, store

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "src" / "platica" / "dashboard" / "locale"
ADMIN_TOKEN = "admin-i18n-5b8e2d7c1a9f3e60"
HTML_LANG = re.compile(r'<html lang="(\w+)">')


def language_cookie(response: httpx.Response) -> str | None:
    """The Set-Cookie header of the language cookie, if the response sets it."""
    found = [
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith(f"{i18n.COOKIE_NAME}=")
    ]
    return found[0] if found else None


def read_catalog(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=language)


# -- the catalogs ----------------------------------------------------------------------------------


class TestCatalogs:
    def test_every_msgid_has_a_spanish_translation(self):
        template = read_catalog(LOCALE / "messages.pot")
        spanish = read_catalog(LOCALE / "es" / "LC_MESSAGES" / "messages.po", "es")
        wanted = {
            message.id if isinstance(message.id, str) else message.id[0]
            for message in template
            if message.id
        }
        assert len(wanted) > 200
        problems = []
        for message in template:
            if not message.id:
                continue
            found = spanish.get(message.id)
            key = message.id if isinstance(message.id, str) else message.id[0]
            if found is None:
                problems.append(f"missing: {key!r}")
                continue
            strings = found.string if isinstance(found.string, tuple) else (found.string,)
            if not all(strings):
                problems.append(f"empty: {key!r}")
            if found.fuzzy:
                problems.append(f"fuzzy: {key!r}")
        assert problems == []

    def test_placeholders_match_and_nothing_is_obsolete(self):
        spanish = read_catalog(LOCALE / "es" / "LC_MESSAGES" / "messages.po", "es")
        # Babel's checkers: the same %(name)s placeholders in msgid and msgstr.
        errors = [(message.id, [str(e) for e in found]) for message, found in spanish.check()]
        assert errors == []
        assert not spanish.obsolete

    def test_the_template_is_up_to_date_with_the_sources(self, tmp_path):
        """`make messages` was run: extracting again finds exactly the catalog's msgids."""
        extracted = tmp_path / "messages.pot"
        CommandLineInterface().run(
            [
                *("pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "N_"),
                *("--no-location", "--omit-header", "-o", str(extracted), str(ROOT)),
            ]
        )
        fresh = {message.id for message in read_catalog(extracted) if message.id}
        committed = {message.id for message in read_catalog(LOCALE / "messages.pot") if message.id}
        assert fresh - committed == set(), "run `make messages` and translate the new strings"
        assert committed - fresh == set(), "run `make messages`: these strings are gone"

    def test_english_needs_no_translation(self):
        with i18n.speaking("en"):
            assert i18n._("Inbox") == "Inbox"
        with i18n.speaking("es"):
            assert i18n._("Inbox") == "Bandeja de entrada"
            assert i18n.ngettext("%(num)s day", "%(num)s days", 2) == "%(num)s días"
            assert i18n._("Account: %(name)s", name="Panadería") == "Cuenta: Panadería"
        assert i18n.current_language() == i18n.DEFAULT_LANGUAGE

    def test_stored_notes_in_spanish(self):
        with i18n.speaking("es"):
            assert display.note("answered by an operator") == "respondido por un operador"
            assert display.note("something new") == "something new"
            assert display.note(None) is None
            assert display.delivery_state("delivered") == "entregado"
            assert display.time_left(utcnow() + timedelta(seconds=30), utcnow()) == (
                "menos de 1 min"
            )
            assert display.time_ago(utcnow() - timedelta(days=3), utcnow()) == "3 días"
            assert display.milliseconds(2400) == "2,4 s"
            assert display.count_messages(12345) == "12.345 mensajes"
        with i18n.speaking("en"):
            assert display.milliseconds(2400) == "2.4 s"
            assert display.count_messages(12345) == "12,345 messages"

    def test_the_stored_notes_are_still_written_somewhere(self):
        """display.STORED_NOTES repeats what the reply path writes: each is still in its code."""
        sources = "".join(
            path.read_text(encoding="utf-8")
            for path in (ROOT / "src" / "platica").rglob("*.py")
            if "dashboard" not in path.parts
        )
        gone = [note for note in display.STORED_NOTES if f'"{note}"' not in sources]
        assert gone == []

    def test_a_recipient_list_error_in_spanish(self):
        with pytest.raises(RecipientsError) as spanish:
            parse_csv(b"telefono,1\n+34600111222,Ana,de sobra\n")
        assert str(spanish.value) == "línea 2: 3 columnas, pero la cabecera nombra 2"
        with i18n.speaking("en"), pytest.raises(RecipientsError) as english:
            parse_csv(b"telefono,1\n+34600111222,Ana,de sobra\n")
        assert str(english.value) == "line 2: 3 columns, but the header names 2"


# -- choosing the language -------------------------------------------------------------------------


class TestAcceptLanguage:
    @pytest.mark.parametrize(
        ("header", "tags"),
        [
            ("es-MX,es;q=0.9,en;q=0.8", ["es-MX", "es", "en"]),
            ("en;q=0.5, fr, de;q=0.7", ["fr", "de", "en"]),
            ("en;q=0, es", ["es"]),
            ("*, en;q=0.1", ["en"]),
            ("", []),
            ("es;q=abc", []),
        ],
    )
    def test_tags_best_first(self, header, tags):
        assert i18n.parse_accept_language(header) == tags


@pytest.fixture
def server(sqlite_url, live_server) -> LiveServer:
    started: LiveServer = live_server(
        make_settings(sqlite_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN), worker=False
    )
    return started


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def login_page(http: httpx.Client, **headers: str) -> httpx.Response:
    response = http.get("/login", headers=headers)
    assert response.status_code == 200, response.text
    return response


class TestChoice:
    def test_spanish_by_default(self, http):
        page = login_page(http).text
        assert HTML_LANG.search(page)[1] == "es"  # type: ignore[index]
        assert "<h1>Iniciar sesión</h1>" in page
        assert "Clave de API o token de administración" in page
        assert "Log in" not in page

    @pytest.mark.parametrize("header", ["es", "es-MX,es;q=0.9,en;q=0.8", "fr-FR, es;q=0.5"])
    def test_spanish_by_accept_language(self, http, header):
        page = login_page(http, **{"Accept-Language": header}).text
        assert HTML_LANG.search(page)[1] == "es"  # type: ignore[index]
        assert "<h1>Iniciar sesión</h1>" in page

    @pytest.mark.parametrize("header", ["en", "en-US,en;q=0.9", "fr, en-GB;q=0.8, es;q=0.5"])
    def test_english_by_accept_language(self, http, header):
        page = login_page(http, **{"Accept-Language": header}).text
        assert HTML_LANG.search(page)[1] == "en"  # type: ignore[index]
        assert "<h1>Log in</h1>" in page
        assert "Iniciar sesión" not in page

    def test_an_unknown_language_gets_spanish(self, http):
        page = login_page(http, **{"Accept-Language": "fr-FR,de;q=0.8"}).text
        assert HTML_LANG.search(page)[1] == "es"  # type: ignore[index]

    @pytest.mark.parametrize(
        ("cookie", "header", "shown"), [("en", "es", "en"), ("es", "en", "es")]
    )
    def test_the_cookie_overrides_the_header(self, server, cookie, header, shown):
        with httpx.Client(
            base_url=server.url, cookies={i18n.COOKIE_NAME: cookie}, timeout=30
        ) as client:
            page = login_page(client, **{"Accept-Language": header}).text
        assert HTML_LANG.search(page)[1] == shown  # type: ignore[index]

    def test_a_bad_cookie_is_ignored(self, server):
        with httpx.Client(
            base_url=server.url, cookies={i18n.COOKIE_NAME: "xx"}, timeout=30
        ) as client:
            page = login_page(client, **{"Accept-Language": "en"}).text
        assert HTML_LANG.search(page)[1] == "en"  # type: ignore[index]

    def test_messages_from_python_follow_the_language(self, http):
        """The login form's error comes from login.py, not from a template."""
        form = login_page(http).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]  # type: ignore[index]
        refused = http.post("/login", data={"token": "plk_nope", "csrf_token": csrf})
        assert refused.status_code == 401
        assert "Esa no es una clave de API ni un token de administración válidos." in refused.text
        english = http.post(
            "/login",
            data={"token": "plk_nope", "csrf_token": csrf},
            headers={"Accept-Language": "en"},
        )
        assert "That is not a valid API key or admin token." in english.text

    def test_concurrent_requests_keep_their_own_language(self, server):
        """The language lives in a ContextVar per request: requests in flight at once, half in
        each language, never get each other's."""

        def fetch(index: int) -> tuple[str, str]:
            wanted = "en" if index % 2 else "es"
            with httpx.Client(base_url=server.url, timeout=30) as client:
                page = login_page(client, **{"Accept-Language": wanted}).text
            heading = re.search(r"<h1>([^<]+)</h1>", page)[1]  # type: ignore[index]
            return wanted, heading

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(fetch, range(40)))
        headings = {"es": "Iniciar sesión", "en": "Log in"}
        assert [heading for _wanted, heading in results] == [
            headings[wanted] for wanted, _heading in results
        ]


class TestSwitch:
    def test_the_switch_sets_the_cookie_and_goes_back(self, http):
        moved = http.get("/language", params={"lang": "en", "next": "/login?next=%2Fstats"})
        assert moved.status_code == 303
        assert moved.headers["location"] == "/login?next=%2Fstats"
        cookie = language_cookie(moved)
        assert cookie is not None
        assert cookie.startswith(f"{i18n.COOKIE_NAME}=en;")
        assert "Max-Age=31536000" in cookie
        assert "HttpOnly" in cookie
        assert "samesite=lax" in cookie.lower()
        # The client keeps the cookie: the next page is in English, whatever the header says.
        page = login_page(http, **{"Accept-Language": "es"}).text
        assert "<h1>Log in</h1>" in page
        back = http.get("/language", params={"lang": "es", "next": "/login"})
        assert (language_cookie(back) or "").startswith(f"{i18n.COOKIE_NAME}=es;")
        assert "<h1>Iniciar sesión</h1>" in login_page(http, **{"Accept-Language": "en"}).text

    @pytest.mark.parametrize(
        "target",
        [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "evil.example",
            "",
        ],
    )
    def test_only_local_paths_are_followed(self, http, target):
        moved = http.get("/language", params={"lang": "en", "next": target})
        assert moved.status_code == 303
        assert moved.headers["location"] == "/"

    def test_an_unknown_language_is_refused(self, http):
        refused = http.get("/language", params={"lang": "fr", "next": "/"})
        assert refused.status_code == 400
        assert language_cookie(refused) is None
        assert "No existe el idioma &#39;fr&#39;: elige uno de es, en." in refused.text

    def test_every_page_has_the_switch(self, http):
        page = login_page(http).text
        assert 'href="/language?lang=en&amp;next=%2Flogin"' in page
        assert 'lang="es" hreflang="es" aria-current="true">Español</a>' in page


class TestPages:
    @pytest.fixture
    def operator(self, server, sqlite_url) -> Iterator[DashboardClient]:
        database = Database(sqlite_url)
        store(
            database,
            default_account(database),
            [
                Seed("+34600111222", "Hola, ¿tienen envío a Monterrey?", name="Lucía"),
                Seed("+34600333444", "¿A qué hora abren el sábado?", status="closed"),
            ],
        )
        database.engine.dispose()
        client = DashboardClient(server, language=None)
        assert client.log_in(ADMIN_TOKEN).status_code == 303
        yield client
        client.close()

    def test_the_inbox_and_its_polled_list_in_spanish(self, operator):
        page = operator.http.get("/")
        assert page.status_code == 200
        assert "<h1>Bandeja de entrada</h1>" in page.text
        for words in ("Difusiones", "Estadísticas", "Ajustes", "Simulador", "Cerrar sesión"):
            assert f">{words}<" in page.text
        assert ">Activa<" in page.text
        assert ">Cerrada<" in page.text
        listed = operator.http.get("/", params={"fragment": "list"})
        assert listed.status_code == 200
        assert 'aria-label="Conversaciones"' in listed.text
        assert ">Cerrada<" in listed.text
        assert "Closed" not in listed.text

    def test_the_inbox_in_english(self, operator):
        page = operator.http.get("/", headers={"Accept-Language": "en"})
        assert "<h1>Inbox</h1>" in page.text
        assert ">Closed<" in page.text

    def test_an_error_page_in_spanish(self, operator):
        missing = operator.http.get("/conversations/sms/999999")
        assert missing.status_code == 404
        assert "<h1>No encontrado</h1>" in missing.text
        assert "Aquí no existe esa conversación, o pertenece a otra cuenta." in missing.text

    def test_the_words_of_app_js_follow_the_language(self, operator):
        """Chart legends and the reply window's countdown are written by app.js, from the
        page's <body data-words>."""
        words = re.compile(r'data-words="([^"]+)"')
        spanish = words.search(operator.http.get("/stats").text)
        english = words.search(operator.http.get("/stats", headers={"Accept-Language": "en"}).text)
        assert spanish is not None
        assert english is not None
        assert json.loads(html.unescape(spanish[1]))["seconds"] == "Segundos"
        assert json.loads(html.unescape(spanish[1]))["day_many"] == "%(num)s días"
        assert json.loads(html.unescape(english[1]))["seconds"] == "Seconds"

    @pytest.mark.parametrize("path", ["/stats", "/settings", "/simulator", "/broadcasts"])
    def test_every_page_renders_in_spanish(self, operator, path):
        page = operator.http.get(path)
        assert page.status_code == 200, page.text
        assert HTML_LANG.search(page.text)[1] == "es"  # type: ignore[index]
        english = operator.http.get(path, headers={"Accept-Language": "en"})
        assert english.status_code == 200
        assert HTML_LANG.search(english.text)[1] == "en"  # type: ignore[index]
        assert page.text != english.text
