"""The dashboard's outreach in Debian's Chromium (Playwright), in `make run`'s local mode (no
Twilio credentials: messages end `dry_run`) with the worker and its broadcaster running: the
reply window counting down, the template picker sending a filled template, and a CSV broadcast
followed to 100%. Polls with Playwright's `expect` deadlines, never sleeps."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from playwright.sync_api import expect
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import Channel, Contact, utcnow
from tests.dashboard import test_dashboard
from tests.dashboard.outreach_data import REMINDER_SID, add_template, add_whatsapp_thread
from tests.dashboard.test_dashboard import ADMIN_TOKEN, Dashboard, in_session

# The browser tests' fixtures: Debian's Chromium, fast polling, and `make run`'s local mode.
browser = test_dashboard.browser
_fast_polling = test_dashboard._fast_polling
local_dashboard = test_dashboard.local_dashboard

ANA = "+34600111222"
OPTED_OUT = "+34600999000"


def whatsapp_thread(dashboard: Dashboard, wrote_ago: timedelta) -> str:
    async def seed(session: AsyncSession) -> int:
        return await add_whatsapp_thread(session, dashboard.account_id, ANA, wrote_ago)

    return f"/conversations/whatsapp/{in_session(dashboard.database_url, seed)}"


class TestReplyWindow:
    def test_counts_down_and_closes_while_open(self, local_dashboard):
        path = whatsapp_thread(local_dashboard, timedelta(hours=23))
        page = local_dashboard.page()
        page.clock.install(time=utcnow())
        local_dashboard.log_in(page, ADMIN_TOKEN)
        page.goto(path)
        window = page.locator(".reply-window")
        expect(window).to_have_text(re.compile(r"^Reply window: (59 min|1 h) left$"))
        expect(page.get_by_label("Reply by hand")).to_be_visible()
        local_dashboard.shot(page, "conversation-window")

        # An hour and a half later, with the page still open: app.js says it closed.
        page.clock.run_for("01:30:00")
        expect(window).to_have_text(
            re.compile(r"^Reply window closed (29|30) min ago: only an approved template")
        )


class TestTemplatePicker:
    def test_sends_the_chosen_template_filled(self, local_dashboard):
        path = whatsapp_thread(local_dashboard, timedelta(hours=25))
        in_session(
            local_dashboard.database_url,
            lambda session: add_template(session, local_dashboard.account_id),
        )
        page = local_dashboard.page()
        local_dashboard.log_in(page, ADMIN_TOKEN)
        page.goto(path)
        expect(page.locator(".reply-window")).to_have_text(
            "Reply window closed 1 h ago: only an approved template can be sent"
        )
        expect(page.get_by_label("Reply by hand")).to_have_count(0)
        expect(page.get_by_label("Template", exact=True)).to_have_value(REMINDER_SID)

        page.get_by_label("{{1}}").fill("Ana")
        page.get_by_label("{{2}}").fill("10:30")
        filled = "Hola Ana, te recordamos tu cita de mañana a las 10:30. ¿Nos confirmas?"
        expect(page.get_by_label("Preview")).to_have_text(filled)
        local_dashboard.shot(page, "conversation-template-picker")
        page.get_by_role("button", name="Send template").click()

        expect(page.get_by_role("status")).to_have_text("Template queued for sending.")
        thread = page.get_by_role("log", name="Messages")
        last = thread.locator(".msg.outbound").last
        expect(last).to_contain_text(filled)
        # Local mode: stored, then not sent (no Twilio credentials).
        expect(last.locator(".delivery")).to_have_text(
            re.compile(r"^(Waiting to be sent|Not sent \(dry run)")
        )
        row = local_dashboard.database.rows(
            "SELECT body, content_sid FROM messages WHERE direction = 'outbound'"
        )
        assert [(r.body, r.content_sid) for r in row] == [(filled, REMINDER_SID)]


class TestBroadcast:
    def test_csv_broadcast_reaches_100_percent(self, local_dashboard, tmp_path: Path):
        database = local_dashboard.database
        database.execute("UPDATE channel_configs SET broadcast_mps = 50")

        async def opted_out(session: AsyncSession) -> None:
            contact = Contact(
                account_id=local_dashboard.account_id,
                channel=Channel.sms,
                address=OPTED_OUT,
                opted_out=True,
                opted_out_at=utcnow(),
            )
            session.add(contact)

        in_session(local_dashboard.database_url, opted_out)
        csv = tmp_path / "clientes.csv"
        csv.write_bytes(
            "\ufefftelefono\r\n+34600111222\r\n+34600333444\r\n+34600999000\r\n600 12\r\n".encode()
        )

        page = local_dashboard.page()
        local_dashboard.log_in(page, ADMIN_TOKEN)
        local_dashboard.nav(page, "Broadcasts")
        expect(page.get_by_text("No broadcasts yet.")).to_be_visible()
        page.get_by_role("link", name="New broadcast").click()
        page.get_by_label("SMS").check()
        page.get_by_label("Name").fill("Cierre por inventario")
        page.get_by_label("Text").fill("Mañana cerramos por inventario. ¡Disculpa las molestias!")
        page.get_by_label("CSV file").set_input_files(str(csv))
        page.get_by_role("button", name="Create broadcast").click()

        expect(
            page.get_by_role("heading", name=re.compile("Cierre por inventario"))
        ).to_be_visible()
        expect(page.locator(".progress-text")).to_have_text("100% handed over: 4 of 4 recipients")
        expect(page.locator('[data-count="skipped"]')).to_have_text("2")
        expect(page.locator('[data-count="dry_run"]')).to_have_text("2")
        expect(page.locator('[data-count="queued"]')).to_have_text("0")
        expect(page.locator(".skip-reasons")).to_contain_text("not a phone number in E.164 form")
        expect(page.locator(".skip-reasons")).to_contain_text("opted out")
        expect(page.locator('[data-status="done"]')).to_have_text("Done")
        # Over: the page stops polling.
        expect(page.locator("#progress")).not_to_have_attribute("hx-get", re.compile("."))
        local_dashboard.shot(page, "broadcast")

        local_dashboard.nav(page, "Broadcasts")
        row = page.get_by_role("row", name=re.compile("Cierre por inventario"))
        expect(row).to_contain_text("Done")
        expect(row).to_contain_text("4 of 4")
