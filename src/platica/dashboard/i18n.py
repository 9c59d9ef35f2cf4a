"""The dashboard's languages: Spanish first, English too, chosen per request.

The catalogs are `locale/<lang>/LC_MESSAGES/messages.po` next to this file (`make messages`
extracts the strings of the templates and of the dashboard's Python into `locale/messages.pot`
and updates them). They are compiled in memory at import, so no binary file is needed on a fresh
clone or in the installed package.

Which language a request gets: the operator's choice (the `platica_lang` cookie, set by the
switch in the header, GET /language), else the best match of the browser's `Accept-Language`,
else Spanish. `use_language()` picks it for a request and puts it in a ContextVar, so that
`_()` (Python) and the templates' `_()`/`{% trans %}` (Jinja2's i18n extension, newstyle) speak
it: each request, task or thread has its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from io import BytesIO
from pathlib import Path
from typing import Any

from babel import Locale, negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from starlette.requests import Request
from starlette.responses import Response

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("es", "en")  # the first is the default
DEFAULT_LANGUAGE = LANGUAGES[0]
LANGUAGE_NAMES = {"es": "Español", "en": "English"}
COOKIE_NAME = "platica_lang"
COOKIE_MAX_AGE_SECONDS = 365 * 24 * 3600
# Header values longer than this are not worth parsing (a browser sends a few dozen bytes).
MAX_ACCEPT_LANGUAGE = 512


def load_catalog(language: str) -> Translations:
    """`language`'s messages.po, compiled in memory (fuzzy entries are left out, as gettext does)."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain="messages")


CATALOGS: dict[str, Translations] = {language: load_catalog(language) for language in LANGUAGES}
LOCALES: dict[str, Locale] = {language: Locale.parse(language) for language in LANGUAGES}

_language: ContextVar[str] = ContextVar("platica_dashboard_language", default=DEFAULT_LANGUAGE)


def current_language() -> str:
    return _language.get()


def current_locale() -> Locale:
    """The current language as a Babel locale, for format_decimal and friends."""
    return LOCALES[_language.get()]


def set_language(language: str) -> None:
    _language.set(language if language in CATALOGS else DEFAULT_LANGUAGE)


@contextmanager
def speaking(language: str) -> Iterator[None]:
    """`language` for the block only (outside a request: tests, scripts)."""
    token = _language.set(language if language in CATALOGS else DEFAULT_LANGUAGE)
    try:
        yield
    finally:
        _language.reset(token)


def gettext(message: str) -> str:
    return CATALOGS[_language.get()].gettext(message)


def ngettext(singular: str, plural: str, number: int) -> str:
    return CATALOGS[_language.get()].ngettext(singular, plural, number)


def _(message: str, **values: Any) -> str:
    """`message` in the current language, with `%(name)s` filled from `values` (if any)."""
    text = gettext(message)
    return text % values if values else text


def N_(message: str) -> str:
    """Marks a string for extraction; it is translated where it is shown (`_(CONSTANT)`)."""
    return message


def parse_accept_language(header: str) -> list[str]:
    """Accept-Language's tags, best first (`es-MX,es;q=0.9,en;q=0.8` → es-MX, es, en)."""
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate(header[:MAX_ACCEPT_LANGUAGE].split(",")):
        tag, _sep, parameters = part.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _eq, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, position, tag))
    return [tag for _q, _p, tag in sorted(weighted)]


def pick_language(request: Request) -> str:
    """The cookie's choice, else the best of Accept-Language, else Spanish."""
    chosen = request.cookies.get(COOKIE_NAME)
    if chosen in CATALOGS:
        return chosen
    preferred = parse_accept_language(request.headers.get("accept-language", ""))
    return negotiate_locale(preferred, LANGUAGES, sep="-") or DEFAULT_LANGUAGE


def use_language(request: Request) -> str:
    """Pick the request's language and make it the current one; returns it."""
    language = pick_language(request)
    set_language(language)
    return language


def remember_language(response: Response, request: Request, language: str) -> None:
    """The `platica_lang` cookie: the operator's choice, for a year."""
    response.set_cookie(
        COOKIE_NAME,
        language,
        max_age=COOKIE_MAX_AGE_SECONDS,
        path=request.scope.get("root_path") or "/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
