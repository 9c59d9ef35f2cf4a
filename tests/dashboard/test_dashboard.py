"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a live server
with the fake OpenAI and the fake Twilio (or in local mode: offline responder, dry-run sender).

Every page is screenshotted into tests/artifacts/ (git-ignored), at desktop and phone widths, so
that it can be looked at. Assertions use Playwright's auto-waiting `expect`, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from sqlalchemy.ext.asyncio import AsyncSession

from platica import db
from platica.accounts import create_account, create_api_key, hash_api_key
from platica.config import Settings
from platica.dashboard import session as dashboard_session
from platica.dashboard import simulator as dashboard_simulator
from platica.dashboard import web as dashboard_web
from platica.texts import built_in
from tests.conftest import Database, LiveServer, make_settings, truncate_all
from tests.dashboard.media_data import (
    INVOICE,
    LATITUDE,
    LONGITUDE,
    TRANSCRIPT,
    VOICE,
    MediaThread,
    seed_media_thread,
)
from tests.factories import CONTACT, inbound_form, post_signed
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.polling import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ADMIN_TOKEN = "admin-dashboard-7f3a9c21"
B_SMS_NUMBER = "+15005550001"
B_WHATSAPP_NUMBER = "+14155550123"
B_CONTACT = "+34655999888"
DEADLINE_SECONDS = 20.0
EXPECTED_STATUS = re.compile(r"status of (401|403|404|409|422)\b")

expect.set_options(timeout=20_000)


def in_session(database_url: str, work: Callable[[AsyncSession], Any]) -> Any:
    """Run `work` in one committed transaction, in a thread of its own: Playwright's sync API
    keeps an event loop running in this one."""

    async def main() -> Any:
        engine = db.create_engine(database_url)
        try:
            async with db.session(db.create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch):
    """Pages poll every 3 s; tests need not wait that long for what they look for."""
    monkeypatch.setattr(dashboard_web, "POLL_SECONDS", 0.4)
    monkeypatch.setattr(dashboard_simulator, "SIMULATOR_POLL_SECONDS", 0.4)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (never a downloaded one); skipped without it, unless CI=true."""
    if not CHROMIUM.exists():
        message = (
            "browser tests need Debian's Chromium at /usr/bin/chromium "
            "(apt-get install chromium; .ci/run installs it)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the browser tests must run)")
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Dashboard:
    """A live Plática, a browser to look at it with, and the fakes behind it."""

    server: LiveServer
    browser: Browser
    database: Database
    database_url: str
    key: str  # account A's (the default account's) API key
    account_id: uuid.UUID
    openai: FakeOpenAI | None = None
    twilio: FakeTwilio | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    contexts: list[BrowserContext] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def settings(self) -> Settings:
        return self.server.settings

    # -- the browser -----------------------------------------------------------------------------

    def page(self, viewport: dict[str, int] = DESKTOP, locale: str = "en-US") -> Page:
        """A fresh browser context (no cookies); console errors and outside requests are recorded.
        The browser asks for English (`locale`: its Accept-Language), as the assertions are in
        English (page.request too); test_i18n_browser.py looks at the Spanish pages."""
        context = self.browser.new_context(
            viewport=viewport,  # type: ignore[arg-type]
            base_url=self.url,
            locale=locale,
            extra_http_headers={"Accept-Language": locale},
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((self.url, "data:"))
                else self.problems.append(f"request outside the server: {request.url}")
            ),
        )
        return page

    def _console(self, message: Any) -> None:
        # Pages answered with a 4xx on purpose (401 login, 404, 422 forms) log "Failed to load
        # resource"; anything else on the console (a script error, a CSP violation) is a problem.
        if message.type == "error" and not EXPECTED_STATUS.search(message.text):
            self.problems.append(f"console {message.type}: {message.text}")

    def log_in(self, page: Page, token: str | None = None) -> None:
        page.goto("/login")
        page.get_by_label("API key or admin token").fill(token or self.key)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()

    def nav(self, page: Page, name: str) -> None:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()

    @staticmethod
    def shot(page: Page, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    # -- Twilio's side ---------------------------------------------------------------------------

    def send(self, channel: str = "sms", **form: Any) -> dict[str, str]:
        """An inbound message webhook, as Twilio posts it (signed when Twilio is configured)."""
        data = inbound_form(channel, **form)
        response = post_signed(self.client, self.url, f"/webhook/{channel}", data)
        assert response.status_code == 200, response.text
        return data

    # -- the database ----------------------------------------------------------------------------

    def conversation_id(self, contact: str = CONTACT, channel: str = "sms") -> int:
        found = wait_for(
            lambda: self.database.scalar(
                "SELECT id FROM conversations WHERE contact_address = :contact"
                " AND channel = :channel ORDER BY id DESC",
                contact=contact,
                channel=channel,
            ),
            f"a {channel} conversation with {contact}",
        )
        return int(found)

    def settled(self) -> bool:
        return not self.database.scalar(
            "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
            " OR (direction = 'outbound' AND status IN ('pending', 'sending'))"
        )

    def account_b(self) -> tuple[uuid.UUID, str]:
        async def make(session: AsyncSession) -> tuple[uuid.UUID, str]:
            account, key = await create_account(
                session,
                "Panadería B",
                whatsapp_number=B_WHATSAPP_NUMBER,
                sms_number=B_SMS_NUMBER,
            )
            return account.id, key

        made: tuple[uuid.UUID, str] = in_session(self.database_url, make)
        self.database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        return made

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.client.close()
        self.database.engine.dispose()


def _start(
    browser: Browser,
    live_server: Callable[[Settings], LiveServer],
    database_url: str,
    **overrides: Any,
) -> Dashboard:
    server = live_server(make_settings(database_url, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN, **overrides))
    database = Database(database_url)
    database.execute("UPDATE channel_configs SET debounce_seconds = 0")
    account_id = uuid.UUID(str(database.scalar("SELECT id FROM accounts WHERE name = 'default'")))
    key = in_session(database_url, lambda session: create_api_key(session, account_id))
    return Dashboard(server, browser, database, database_url, key, account_id)


@pytest.fixture
def dashboard(browser, sqlite_url, live_server) -> Iterator[Dashboard]:
    """Twilio configured (signatures checked) with the fake Twilio posting status callbacks, the
    fake OpenAI answering "Echo: ...", debounce 0; account A is the default account."""
    with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
        started = _start(
            browser,
            live_server,
            sqlite_url,
            OPENAI_BASE_URL=openai.url,
            OPENAI_API_KEY="sk-local-0123456789",
            TWILIO_API_BASE_URL=twilio.url,
        )
        started.openai, started.twilio = openai, twilio
        yield started
        started.close()
        assert started.problems == [], started.problems


@pytest.fixture
def local_dashboard(browser, sqlite_url, live_server) -> Iterator[Dashboard]:
    """`make run`'s mode: no Twilio credentials (dry run, demo numbers) and no OpenAI (offline
    responder); an admin token to log in with."""
    started = _start(
        browser,
        live_server,
        sqlite_url,
        TWILIO_ACCOUNT_SID=None,
        TWILIO_AUTH_TOKEN=None,
        TWILIO_PHONE_NUMBER=None,
        TWILIO_WHATSAPP_NUMBER=None,
    )
    yield started
    started.close()
    assert started.problems == [], started.problems


def simulate(page: Page, channel: str, text: str, sender: str | None = None) -> None:
    page.get_by_label("WhatsApp" if channel == "whatsapp" else "SMS").check()
    if sender is not None:
        page.get_by_label("From (the test contact's number)").fill(sender)
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send as the contact").click()


class TestLogin:
    def test_api_key_login_cookie_and_logout(self, dashboard):
        page = dashboard.page()
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        dashboard.shot(page, "login")

        page.get_by_label("API key or admin token").fill("plk_not-a-real-key")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text(
            "That is not a valid API key or admin token."
        )

        page.get_by_label("API key or admin token").fill(dashboard.key)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()
        expect(page.get_by_text("default", exact=True)).to_be_visible()

        (cookie,) = page.context.cookies()
        assert cookie["name"] == "platica_session"
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert dashboard.key not in cookie["value"]
        serializer = URLSafeTimedSerializer(
            dashboard_session.signing_key(dashboard.settings), salt="platica.dashboard.session"
        )
        content = serializer.loads(cookie["value"])
        assert content["kind"] == "api_key"
        assert content["credential"] == hash_api_key(dashboard.key)
        assert dashboard.key not in str(content)

        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        page.goto("/stats")
        expect(page).to_have_url(re.compile(r"/login\?next=%2Fstats$"))

    def test_forged_cookie_and_revoked_key_end_the_session(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        (cookie,) = page.context.cookies()
        page.context.add_cookies([{**cookie, "value": cookie["value"][:-2] + "xx"}])
        page.goto("/")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()

        dashboard.log_in(page)
        page.goto("/?channel=sms")
        dashboard.database.execute("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP")
        # The inbox's next poll finds the session over and the page goes to the login form.
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        expect(page).to_have_url(re.compile(r"/login\?next=%2F%3Fchannel%3Dsms"))

    def test_posts_without_the_csrf_token_are_refused(self, dashboard):
        dashboard.send(body="Hola")
        conversation = dashboard.conversation_id()
        page = dashboard.page()
        dashboard.log_in(page)

        for path, form in (
            ("/logout", {}),
            (f"/conversations/sms/{conversation}/close", {}),
            (f"/conversations/sms/{conversation}/close", {"csrf_token": "forged" * 8}),
            (f"/conversations/sms/{conversation}/retry", {}),
            ("/settings/sms", {"temperature": "1"}),
        ):
            response = page.request.post(path, form=form)
            assert response.status == 403, (path, response.status)
        assert "Form expired" in response.text()
        assert dashboard.database.scalar("SELECT status FROM conversations") == "active"

        anonymous = dashboard.page()
        response = anonymous.request.post("/login", form={"token": dashboard.key})
        assert response.status == 403
        page.goto("/")  # still logged in: the refused logout did nothing
        expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()


class TestSimulator:
    def test_local_mode_whole_loop_without_keys(self, local_dashboard):
        """What a newcomer sees on `make run`: no Twilio, no OpenAI, and the loop still works."""
        page = local_dashboard.page()
        local_dashboard.log_in(page, ADMIN_TOKEN)
        local_dashboard.nav(page, "Simulator")
        expect(page.get_by_text("Twilio is not configured")).to_be_visible()

        simulate(page, "whatsapp", "Hola, ¿abren el domingo?")
        phone = page.get_by_role("log", name="Conversation on the test phone")
        expect(phone).to_contain_text("Hola, ¿abren el domingo?")
        expect(phone).to_contain_text("[Respuesta de prueba, sin IA: configura OPENAI_API_KEY")
        expect(phone).to_contain_text("not sent (dry run")
        local_dashboard.shot(page, "simulator")

        simulate(page, "sms", "Quiero pan", sender="+15550100002")
        phone = page.get_by_role("log", name="Conversation on the test phone")
        expect(phone).to_contain_text("Quiero pan")
        expect(phone).to_contain_text('Dijiste: "Quiero pan"')
        expect(page.get_by_role("heading", name=re.compile(r"SMS · \+1555\*+02"))).to_be_visible()

        page.set_viewport_size(PHONE)
        local_dashboard.shot(page, "simulator-phone")

        local_dashboard.nav(page, "Inbox")
        expect(page.locator(".conversation-row")).to_have_count(2)

    def test_with_twilio_configured_replies_are_still_never_sent(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        dashboard.nav(page, "Simulator")
        expect(page.get_by_text("Replies to the simulator are never sent")).to_be_visible()
        simulate(page, "sms", "¿Tienen pan sin gluten?")

        phone = page.get_by_role("log", name="Conversation on the test phone")
        expect(phone).to_contain_text("Echo: ¿Tienen pan sin gluten?")
        expect(phone).to_contain_text("not sent (dry run: the simulator's replies are never sent)")
        # Recorded in-process as the webhook records a message (so not signed).
        log = dashboard.database.rows(
            "SELECT endpoint, outcome, signature_valid FROM webhook_logs WHERE endpoint = 'sms'"
        )
        assert [(r.outcome, r.signature_valid) for r in log] == [("accepted", None)]
        assert dashboard.twilio is not None
        assert dashboard.twilio.sent == []

    def test_invalid_input_is_explained_next_to_the_fields(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        dashboard.nav(page, "Simulator")
        simulate(page, "sms", "   ", sender="555-0100")
        sender = page.get_by_label("From (the test contact's number)")
        expect(sender).to_have_attribute("aria-invalid", "true")
        expect(sender).to_have_accessible_description(
            re.compile("From: must be an E.164 number like")
        )
        expect(page.get_by_role("textbox", name="Message")).to_have_accessible_description(
            re.compile("Message: write a message first")
        )
        assert dashboard.database.count("messages") == 0


class TestInbox:
    def test_updates_live_with_markers_and_filters(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        expect(page.get_by_text("No conversations.")).to_be_visible()

        dashboard.send(body="¿Abren el domingo?")
        # Answered before the next message arrives: replies land in any order, and the list
        # shows the newest activity first.
        wait_for(dashboard.settled, "the SMS reply")
        dashboard.send("whatsapp", body="Hola", sender="+34611222333")
        rows = page.locator(".conversation-row")
        expect(rows).to_have_count(2)  # without reloading: the list polls
        expect(rows.first).to_contain_text("WhatsApp")
        expect(rows.nth(1)).to_contain_text("SMS")
        expect(rows.nth(1)).to_contain_text("+3460*****22")
        expect(page.get_by_text(CONTACT)).to_have_count(0)  # numbers are masked
        expect(rows.nth(1)).to_contain_text("Echo: ¿Abren el domingo?")
        expect(rows.first.get_by_text("New")).to_be_visible()

        # Paused by an operator: the contact's next message waits for a human.
        wait_for(dashboard.settled, "the WhatsApp reply")
        dashboard.database.execute(
            "UPDATE conversations SET ai_enabled = false WHERE channel = 'sms'"
        )
        dashboard.send(body="¿Hay alguien?")
        sms_row = page.locator(".conversation-row", has_text="SMS")
        expect(sms_row).to_contain_text("¿Hay alguien?")
        expect(sms_row).to_contain_text("Handed off")
        expect(rows.first).to_contain_text("SMS")  # newest activity first
        dashboard.shot(page, "inbox")
        page.set_viewport_size(PHONE)
        dashboard.shot(page, "inbox-phone")
        page.set_viewport_size(DESKTOP)

        page.get_by_label("Channel").select_option("whatsapp")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("WhatsApp")

        page.get_by_label("Channel").select_option("")
        page.get_by_label("Status").select_option("handed_off")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("¿Hay alguien?")

        page.get_by_label("Status").select_option("closed")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_text("No conversations match these filters.")).to_be_visible()

        page.get_by_label("Status").select_option("")
        page.get_by_label("Search").fill("HAY ALGUIEN")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("SMS")
        expect(page.get_by_label("Search")).to_have_value("HAY ALGUIEN")

    def test_awaiting_reply_until_answered_and_opted_out(self, dashboard):
        dashboard.openai.latency = 3.0
        dashboard.send(body="STOP", sender="+34622333444")
        dashboard.send(body="¿Me ayudan?")
        page = dashboard.page()
        dashboard.log_in(page)
        waiting = page.locator(".conversation-row", has_text="+3460*****22")
        expect(waiting.get_by_text("Awaiting reply")).to_be_visible()
        expect(waiting).to_contain_text("Active")
        expect(page.locator(".conversation-row", has_text="STOP")).to_contain_text("Opted out")
        expect(waiting).to_contain_text("Echo: ¿Me ayudan?")
        expect(waiting.get_by_text("Awaiting reply")).to_have_count(0)


class TestConversation:
    def test_delivery_states_and_ai_details(self, dashboard):
        dashboard.send(body="Hola")
        wait_for(
            lambda: (
                dashboard.database.scalar(
                    "SELECT status FROM messages WHERE direction = 'outbound'"
                )
                == "delivered"
            ),
            "the delivered reply",
        )
        page = dashboard.page()
        dashboard.log_in(page)
        page.locator(".conversation-row").first.get_by_role("link").click()
        thread = page.get_by_role("log", name="Messages")
        reply = thread.locator(".msg.outbound")
        expect(reply).to_contain_text("Echo: Hola")
        expect(reply).to_contain_text("Delivered")
        expect(reply).to_contain_text(
            re.compile(r"gpt-4o-mini · \d+ prompt \+ \d+ completion tokens · \d+ ms")
        )
        expect(reply).to_contain_text("1 segment, GSM-7")
        expect(thread.locator(".msg.inbound")).to_contain_text("Contact")
        dashboard.shot(page, "conversation")

    def test_failed_delivery_is_explained_in_words(self, dashboard):
        dashboard.twilio.fail_next("undelivered:30003")
        dashboard.send(body="Hola")
        page = dashboard.page()
        dashboard.log_in(page)
        page.goto(f"/conversations/sms/{dashboard.conversation_id()}")
        reply = page.locator(".msg.outbound")
        expect(reply).to_contain_text("Not delivered")  # the thread polls until it is
        expect(reply).to_contain_text(
            "Error 30003: the handset is unreachable (switched off or out of coverage)"
        )
        dashboard.shot(page, "conversation-failed")

    def test_voice_note_photo_location_and_invoice(self, dashboard):
        """Played through in the browser: every item comes from Plática (the page's policy
        allows no other source), the invoice fetched from Twilio when it is opened."""
        invoice_url = dashboard.twilio.add_media(INVOICE, "application/pdf")
        thread_data: MediaThread = in_session(
            dashboard.database_url,
            lambda session: seed_media_thread(
                session, dashboard.account_id, invoice_url=invoice_url
            ),
        )
        page = dashboard.page()
        dashboard.log_in(page)
        page.locator(".conversation-row").first.get_by_role("link").click()
        thread = page.get_by_role("log", name="Messages")
        expect(thread).to_contain_text(TRANSCRIPT)
        assert dashboard.twilio.url not in page.content()

        player = thread.get_by_label("Voice note from the contact, 0:04")
        expect(player).to_be_visible()
        source = player.get_attribute("src")
        assert source == thread_data.media_path(thread_data.voice)
        answer = page.request.get(source)
        assert answer.status == 200
        assert answer.headers["content-type"] == "audio/ogg"
        assert answer.body() == VOICE
        # Chromium reads the voice note's length from the bytes Plática serves.
        player.evaluate("audio => { audio.preload = 'metadata'; audio.load(); }")
        page.wait_for_function("audio => audio.readyState >= 1", arg=player.element_handle())
        assert round(player.evaluate("audio => audio.duration")) == 4

        image = thread.get_by_role("img", name=re.compile(r"^Image from the contact"))
        image.scroll_into_view_if_needed()  # loading="lazy"
        page.wait_for_function(
            "image => image.complete && image.naturalWidth > 0", arg=image.element_handle()
        )
        assert image.evaluate("image => [image.naturalWidth, image.naturalHeight]") == [320, 240]
        full_size = thread.get_by_role("link", name="Open the image full size (new tab)")
        expect(full_size).to_have_attribute("target", "_blank")

        map_link = thread.get_by_role("link", name="Open the map (OpenStreetMap, new tab)")
        expect(map_link).to_have_attribute(
            "href",
            f"https://www.openstreetmap.org/?mlat={LATITUDE:.6f}&mlon={LONGITUDE:.6f}"
            f"#map=17/{LATITUDE:.6f}/{LONGITUDE:.6f}",
        )
        expect(map_link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
        expect(thread).to_contain_text("Panadería La Espiga")

        document = thread.get_by_role("link", name="Document (PDF)")
        expect(thread.locator(".media-document.media-pending")).to_contain_text("Reading…")
        with page.expect_download() as download:
            document.click()
        assert download.value.suggested_filename == f"document-{thread_data.invoice}.pdf"
        assert Path(download.value.path()).read_bytes() == INVOICE
        assert [r["authorised"] for r in dashboard.twilio.media_requests] == [True]
        thread.evaluate("log => { log.scrollTop = 0; }")  # the voice note first
        dashboard.shot(page, "conversation-media")
        page.set_viewport_size(PHONE)
        thread.evaluate("log => { log.scrollTop = 0; }")
        dashboard.shot(page, "conversation-media-phone")

    def test_hand_off_reply_by_hand_resume_and_close(self, dashboard):
        dashboard.send(body="Hola")
        wait_for(lambda: dashboard.settled() and dashboard.twilio.sent, "the AI's reply")
        page = dashboard.page()
        page.on("dialog", lambda dialog: dialog.accept())
        dashboard.log_in(page)
        page.locator(".conversation-row").first.get_by_role("link").click()
        status = page.locator(".thread-status .status")
        expect(status).to_have_text("Active")

        page.get_by_role("button", name="Hand off (pause the AI)").click()
        expect(page.get_by_role("status")).to_have_text(
            "You have the conversation: the AI stays quiet until you resume it."
        )
        expect(status).to_have_text("Handed off")
        thread = page.get_by_role("log", name="Messages")
        # The contact is told, in the channel's language.
        expect(thread).to_contain_text(built_in("es", "handoff_message"))
        dashboard.send(body="¿Me atiende una persona?")
        # It waits for the operator, who sees it waiting.
        expect(thread.locator(".msg").last).to_contain_text("Awaiting reply")

        page.get_by_label("Reply by hand").fill("Hola, soy Marta. ¿En qué te ayudo?")
        page.get_by_role("button", name="Send reply").click()
        expect(page.get_by_role("status")).to_have_text("Reply queued for sending.")
        mine = thread.locator(".msg.author-operator")
        expect(mine).to_contain_text("Operator")
        expect(mine).to_contain_text("Hola, soy Marta. ¿En qué te ayudo?")
        expect(mine).to_contain_text("Delivered")
        expect(thread).to_contain_text("answered by an operator")
        assert dashboard.twilio.sent[-1]["body"] == "Hola, soy Marta. ¿En qué te ayudo?"
        assert len(dashboard.openai.requests) == 1
        dashboard.shot(page, "conversation-handoff")
        page.set_viewport_size(PHONE)
        dashboard.shot(page, "conversation-phone")
        page.set_viewport_size(DESKTOP)

        page.get_by_role("button", name="Resume the AI").click()
        expect(status).to_have_text("Active")
        dashboard.send(body="Gracias")
        expect(thread).to_contain_text("Echo: Gracias")

        page.get_by_role("button", name="Close").click()
        expect(status).to_have_text("Closed")
        expect(page.get_by_text("This conversation is closed.")).to_be_visible()
        expect(page.get_by_label("Reply by hand")).to_have_count(0)
        assert dashboard.database.scalar("SELECT status FROM conversations") == "closed"

    def test_a_parked_conversation_shows_its_error_and_is_retried(self, dashboard):
        """Its reply task kept crashing: the inbox marks it, the page says why, and Retry
        unparks it and answers what waited."""
        dashboard.send(body="Hola")
        wait_for(lambda: dashboard.settled() and dashboard.twilio.sent, "the AI's reply")
        dashboard.database.execute(
            "UPDATE conversations SET parked_at = created_at, crash_count = 5, parked_error ="
            " 'IntegrityError: duplicate key value violates unique constraint'"
        )
        dashboard.send(body="¿Hay alguien?")
        page = dashboard.page()
        dashboard.log_in(page)
        row = page.locator(".conversation-row").first
        expect(row.get_by_text("Parked", exact=True)).to_be_visible()

        row.get_by_role("link").click()
        parked = page.get_by_role("region", name="Replies stopped")
        expect(parked).to_contain_text("IntegrityError: duplicate key value")
        dashboard.shot(page, "conversation-parked")
        parked.get_by_role("button", name="Retry").click()

        expect(page.get_by_role("status")).to_have_text(
            "Retried: the conversation's replies run again."
        )
        expect(page.get_by_role("region", name="Replies stopped")).to_have_count(0)
        expect(page.get_by_role("log", name="Messages")).to_contain_text("Echo: ¿Hay alguien?")
        assert dashboard.database.scalar("SELECT parked_at FROM conversations") is None

    def test_manual_reply_problems_are_shown(self, dashboard):
        dashboard.send(body="Hola")
        conversation = dashboard.conversation_id()
        page = dashboard.page()
        dashboard.log_in(page)
        page.goto(f"/conversations/sms/{conversation}")
        page.get_by_label("Reply by hand").fill("   ")
        page.get_by_role("button", name="Send reply").click()
        expect(page.get_by_role("alert")).to_contain_text("The reply")
        expect(page.get_by_label("Reply by hand")).to_have_attribute("aria-invalid", "true")

        dashboard.database.execute("UPDATE contacts SET opted_out = true")
        page.reload()
        expect(page.get_by_text("The contact opted out (STOP)")).to_be_visible()


class TestSettings:
    def test_a_change_takes_effect_on_the_next_reply(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        dashboard.nav(page, "Settings")
        sms = page.locator("section#sms")
        expect(sms.get_by_label("Context messages")).to_have_value("10")
        sms.get_by_label("Model").fill("my-local-model")
        sms.get_by_label("Max tokens").fill("42")
        sms.get_by_label("System prompt").fill("Eres el asistente de la Panadería Lola.\nSé breve.")
        expect(sms.get_by_label("Customers' language")).to_have_value("es")
        sms.get_by_label("Customers' language").select_option(label="English (en)")
        sms.get_by_label("Delete Twilio's copy once understood").check()
        sms.get_by_role("button", name="Save SMS settings").click()
        expect(page.get_by_role("status")).to_have_text(
            "SMS settings saved. The next reply uses them."
        )
        sms = page.locator("section#sms")
        expect(sms.get_by_label("Model")).to_have_value("my-local-model")
        expect(sms.get_by_label("Customers' language")).to_have_value("en")
        expect(sms.get_by_label("Delete Twilio's copy once understood")).to_be_checked()
        expect(sms.get_by_label("Show images to the AI (vision)")).not_to_be_checked()
        dashboard.shot(page, "settings")

        dashboard.nav(page, "Simulator")
        simulate(page, "sms", "¿Hay croissants?")
        expect(page.get_by_role("log", name="Conversation on the test phone")).to_contain_text(
            "Echo: ¿Hay croissants?"
        )
        page.get_by_role("link", name="Open this conversation in the inbox").click()
        expect(page.locator(".msg.outbound")).to_contain_text("my-local-model")
        request = dashboard.openai.requests[-1]
        assert request["model"] == "my-local-model"
        assert request["max_tokens"] == 42
        assert request["messages"][0]["content"].startswith(
            "Eres el asistente de la Panadería Lola.\nSé breve."
        )
        whatsapp_model = dashboard.database.scalar(
            "SELECT openai_model FROM channel_configs WHERE channel = 'whatsapp'"
        )
        assert whatsapp_model is None

    def test_invalid_values_are_explained_next_to_the_fields(self, dashboard):
        page = dashboard.page()
        dashboard.log_in(page)
        dashboard.nav(page, "Settings")
        whatsapp = page.locator("section#whatsapp")
        whatsapp.get_by_label("Temperature").fill("5")
        whatsapp.get_by_label("Max tokens").fill("2.5")
        whatsapp.get_by_label("Fallback message").fill("x" * 1601)
        whatsapp.get_by_label("Debounce (seconds)").fill("3")
        whatsapp.get_by_role("button", name="Save WhatsApp settings").click()

        whatsapp = page.locator("section#whatsapp")
        expect(whatsapp.get_by_role("alert")).to_have_text(
            "Not saved: 3 fields to fix, marked below."
        )
        expect(whatsapp.get_by_label("Temperature")).to_have_accessible_description(
            re.compile(r"Temperature: must be at most 2")
        )
        expect(whatsapp.get_by_label("Max tokens")).to_have_accessible_description(
            re.compile(r"Max tokens: must be a whole number")
        )
        expect(whatsapp.get_by_label("Fallback message")).to_have_accessible_description(
            re.compile(r"Fallback message: must be at most 1600 characters")
        )
        expect(whatsapp.get_by_label("Debounce (seconds)")).to_have_value("3")  # kept as typed
        expect(whatsapp.get_by_label("Debounce (seconds)")).not_to_have_attribute(
            "aria-invalid", "true"
        )
        dashboard.shot(page, "settings-errors")
        row = dashboard.database.rows(
            "SELECT temperature, debounce_seconds FROM channel_configs WHERE channel = 'whatsapp'"
        )[0]
        assert (row.temperature, row.debounce_seconds) == (0.7, 0)  # nothing saved


class TestStats:
    def test_figures_of_the_api_and_charts(self, dashboard):
        dashboard.send(body="Hola")
        dashboard.send(body="Hola", sender="+34699000111")
        dashboard.send("whatsapp", body="Buenas")
        wait_for(lambda: dashboard.settled() and len(dashboard.twilio.sent) == 3, "three replies")
        api = {
            channel: dashboard.client.get(
                f"{dashboard.url}/api/{channel}/stats",
                headers={"Authorization": f"Bearer {dashboard.key}"},
            ).json()
            for channel in ("sms", "whatsapp")
        }
        assert api["sms"]["total_messages"] == 4

        page = dashboard.page()
        dashboard.log_in(page)
        dashboard.nav(page, "Stats")
        for channel, figures in api.items():
            cards = page.locator(f"dl[data-channel={channel}]")
            for name in (
                "total_conversations",
                "active_conversations",
                "total_messages",
                "incoming_messages",
                "outgoing_messages",
                "active_users_24h",
                "active_users_7d",
            ):
                expect(cards.locator(f"[data-stat={name}]")).to_have_text(str(figures[name]))
            expect(cards.locator("[data-stat=avg_response_time_ms]")).to_have_text(
                re.compile(r"^\d+(\.\d)? m?s$")
            )
        for chart in ("messages", "replies", "response"):
            canvas = page.locator(f"#chart-sms-{chart}")
            expect(canvas).to_have_attribute("data-drawn", "true")
        totals = page.evaluate(
            """() => {
                const chart = Chart.getChart(document.getElementById('chart-sms-messages'));
                const sum = (values) => values.reduce((a, b) => a + (b || 0), 0);
                return chart.data.datasets.map((set) => [set.label, sum(set.data)]);
            }"""
        )
        assert totals == [["Incoming", 2], ["Outgoing", 2]]
        replies = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-sms-replies')).data.datasets[0].data"
        )
        assert sum(replies) == 2
        assert len(replies) == 30
        dashboard.shot(page, "stats")
        page.set_viewport_size(PHONE)
        dashboard.shot(page, "stats-phone")

        page.get_by_label("Period").select_option("7")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#chart-sms-replies")).to_have_attribute("data-drawn", "true")
        days = page.evaluate(
            "() => Chart.getChart(document.getElementById('chart-sms-replies')).data.labels.length"
        )
        assert days == 7


class TestAccounts:
    def test_account_a_cannot_reach_account_b_conversation(self, dashboard):
        _b_id, _b_key = dashboard.account_b()
        dashboard.send(body="Secreto de B", sender=B_CONTACT, to=B_SMS_NUMBER)
        theirs = dashboard.conversation_id(contact=B_CONTACT)
        dashboard.send(body="Hola de A")
        page = dashboard.page()
        dashboard.log_in(page)
        expect(page.locator(".conversation-row")).to_have_count(1)
        expect(page.get_by_text("Secreto de B")).to_have_count(0)

        response = page.goto(f"/conversations/sms/{theirs}")
        assert response is not None
        assert response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.get_by_text("Secreto de B")).to_have_count(0)
        dashboard.shot(page, "not-found")
        fragment = page.request.get(f"/conversations/sms/{theirs}?fragment=thread")
        assert fragment.status == 404
        assert "Secreto" not in fragment.text()

        page.goto("/")
        csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
        for action in ("close", "handoff", "reply"):
            response = page.request.post(
                f"/conversations/sms/{theirs}/{action}",
                form={"csrf_token": csrf or "", "body": "intruso"},
            )
            assert response.status == 404, action
        row = dashboard.database.rows(
            "SELECT status, ai_enabled FROM conversations WHERE id = :id", id=theirs
        )[0]
        assert (row.status, bool(row.ai_enabled)) == ("active", True)
        assert (
            dashboard.database.scalar("SELECT count(*) FROM messages WHERE body = 'intruso'") == 0
        )

    def test_admin_sees_every_account_and_switches(self, dashboard):
        dashboard.account_b()
        dashboard.send(body="Hola de B", sender=B_CONTACT, to=B_SMS_NUMBER)
        dashboard.send(body="Hola de A")
        page = dashboard.page()
        dashboard.log_in(page, ADMIN_TOKEN)
        rows = page.locator(".conversation-row")
        expect(rows).to_have_count(2)
        expect(rows.filter(has_text="Hola de B")).to_contain_text("Account: Panadería B")

        page.get_by_label("Account", exact=True).select_option(label="Panadería B")
        page.get_by_role("button", name="Switch").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("Hola de B")
        dashboard.nav(page, "Settings")
        expect(page.locator("section#sms")).to_contain_text(B_SMS_NUMBER)

        page.get_by_label("Account", exact=True).select_option(label="All accounts")
        page.get_by_role("button", name="Switch").click()
        expect(page.get_by_text("Choose an account in the header")).to_be_visible()


class TestAccessibility:
    PAGES = ("/", "/stats", "/settings", "/simulator")

    def test_labels_keyboard_and_phone_width(self, dashboard):
        dashboard.send(body="Hola")
        page = dashboard.page(PHONE)
        dashboard.log_in(page)
        conversation = f"/conversations/sms/{dashboard.conversation_id()}"
        for path in (*self.PAGES, conversation):
            page.goto(path)
            expect(page.locator("main h1")).to_be_visible()
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input, select, textarea')]
                    .filter((e) => e.type !== 'hidden' && e.labels.length === 0)
                    .map((e) => e.name)"""
            )
            assert unlabelled == [], (path, unlabelled)
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, (path, overflow)
        dashboard.shot(page, "conversation-phone-small")

        page.goto("/")
        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        expect(page.get_by_label("Channel")).to_be_focused()


@pytest.mark.postgres
class TestOnPostgreSQL:
    def test_loop_steering_and_isolation(self, browser, postgres_url, live_server):
        truncate_all(postgres_url)
        with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
            dashboard = _start(
                browser,
                live_server,
                postgres_url,
                OPENAI_BASE_URL=openai.url,
                OPENAI_API_KEY="sk-local-0123456789",
                TWILIO_API_BASE_URL=twilio.url,
            )
            dashboard.openai, dashboard.twilio = openai, twilio
            try:
                dashboard.account_b()
                dashboard.send(body="De B", sender=B_CONTACT, to=B_SMS_NUMBER)
                theirs = dashboard.conversation_id(contact=B_CONTACT)
                page = dashboard.page()
                dashboard.log_in(page)
                dashboard.nav(page, "Simulator")
                simulate(page, "whatsapp", "Hola desde PostgreSQL")
                expect(
                    page.get_by_role("log", name="Conversation on the test phone")
                ).to_contain_text("AI · not sent (dry run: the simulator's replies are never sent)")
                page.get_by_role("link", name="Open this conversation in the inbox").click()
                page.get_by_role("button", name="Hand off (pause the AI)").click()
                page.get_by_label("Reply by hand").fill("Te atiendo yo")
                page.get_by_role("button", name="Send reply").click()
                expect(page.locator(".msg.author-operator")).to_contain_text("Delivered")
                response = page.goto(f"/conversations/sms/{theirs}")
                assert response is not None
                assert response.status == 404
                dashboard.nav(page, "Stats")
                # Hola, its answer, the handoff notice (dry run too) and the reply by hand.
                expect(
                    page.locator("dl[data-channel=whatsapp] [data-stat=total_messages]")
                ).to_have_text("4")
                expect(
                    page.locator("dl[data-channel=sms] [data-stat=total_messages]")
                ).to_have_text("0")
            finally:
                dashboard.close()
            assert dashboard.problems == [], dashboard.problems
