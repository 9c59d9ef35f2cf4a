"""The dashboard's outreach over plain HTTP: WhatsApp's reply window on the conversation page,
the template picker once it is closed, the broadcasts pages (CSV upload, progress, cancel) and
the broadcast pace setting; CSRF-checked and scoped to the operator's account, on SQLite and
PostgreSQL (no worker: what is stored is what is looked at)."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import Channel, TemplateApproval
from tests.conftest import Database, make_settings, sqlite_only
from tests.dashboard.client import DashboardClient
from tests.dashboard.outreach_data import (
    PENDING_SID,
    REMINDER_SID,
    add_template,
    add_whatsapp_thread,
)
from tests.dashboard.test_settings_form import FORM as SETTINGS_FORM
from tests.fakes import FakeTwilio
from tests.records import add_account, default_account_key, in_session

ANA = "+34600111222"
LUIS = "+34600333444"
B_WHATSAPP = "+14155550199"


@dataclass
class Seeded:
    operator: DashboardClient
    database: Database
    database_url: str
    account_id: uuid.UUID

    def add(self, work: Any) -> Any:
        return in_session(self.database_url, work)

    def thread(
        self, address: str, wrote_ago: timedelta | None, channel: Channel = Channel.whatsapp
    ) -> str:
        async def seed(session: AsyncSession) -> int:
            return await add_whatsapp_thread(
                session, self.account_id, address, wrote_ago, channel=channel
            )

        return f"/conversations/{channel.value}/{self.add(seed)}"

    def templates(self) -> None:
        async def seed(session: AsyncSession) -> None:
            await add_template(session, self.account_id)
            await add_template(
                session,
                self.account_id,
                sid=PENDING_SID,
                name="oferta_verano",
                body="¡{{1}}, este verano 20 % en todo!",
                approval=TemplateApproval.pending,
            )

        self.add(seed)

    def template_id(self, sid: str = REMINDER_SID) -> int:
        return int(self.database.scalar("SELECT id FROM templates WHERE sid = :sid", sid=sid))


@pytest.fixture
def seeded(database_url, live_server) -> Iterator[Seeded]:
    server = live_server(make_settings(database_url), worker=False)
    account_id, key = default_account_key(database_url)
    operator = DashboardClient(server)
    assert operator.log_in(key).status_code == 303
    database = Database(database_url)
    try:
        yield Seeded(operator, database, database_url, account_id)
    finally:
        operator.close()
        database.engine.dispose()


def text_of(response: Any) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", response.text)))


@sqlite_only
class TestReplyWindow:
    def test_open_window_counts_down_and_keeps_the_reply_box(self, seeded):
        page = seeded.operator.http.get(seeded.thread(ANA, timedelta(hours=19, minutes=30)))
        assert page.status_code == 200
        assert re.search(r"Reply window: (4 h 29 min|4 h 30 min) left", text_of(page))
        assert re.search(
            r'<p class="reply-window window-open" data-window-closes="[^"]+Z?', page.text
        )
        assert 'name="body"' in page.text
        assert "Send a template" not in page.text

    def test_closed_window_offers_the_approved_templates_only(self, seeded):
        seeded.templates()
        page = seeded.operator.http.get(seeded.thread(ANA, timedelta(hours=27)))
        text = text_of(page)
        assert "Reply window closed 3 h ago: only an approved template can be sent" in text
        assert 'name="body"' not in page.text
        assert "recordatorio_cita (es)" in text
        assert "oferta_verano" not in text
        template_id = seeded.template_id()
        assert f'name="var-{template_id}-1"' in page.text
        assert f'name="var-{template_id}-2"' in page.text
        assert 'placeholder="e.g. Ana"' in page.text

    def test_never_wrote_without_templates_says_how_to_sync(self, seeded):
        text = text_of(seeded.operator.http.get(seeded.thread(ANA, None)))
        assert "The contact has not written yet: only an approved template can be sent" in text
        assert "no approved WhatsApp template" in text
        assert "POST /api/whatsapp/templates/sync or platica templates sync" in text

    def test_sms_has_no_window(self, seeded):
        page = seeded.operator.http.get(seeded.thread(ANA, timedelta(days=3), Channel.sms))
        assert "Reply window" not in page.text
        assert 'name="body"' in page.text

    def test_free_text_after_the_window_closed_shows_the_409(self, seeded):
        path = seeded.thread(ANA, timedelta(hours=25))
        response = seeded.operator.post_form(
            f"{path}/reply", path, {"body": "¿Sigue en pie la cita?"}
        )
        assert response.status_code == 409
        text = text_of(response)
        assert "Not sent: " in text
        assert "customer-service window" in text
        assert "¿Sigue en pie la cita?" in text  # what was typed is kept
        assert seeded.database.count("messages") == 1


@sqlite_only
class TestTemplatePicker:
    def test_sends_the_filled_template(self, seeded):
        seeded.templates()
        path = seeded.thread(ANA, timedelta(hours=30))
        template_id = seeded.template_id()
        response = seeded.operator.post_form(
            f"{path}/template",
            path,
            {
                "template": REMINDER_SID,
                f"var-{template_id}-1": "Ana",
                f"var-{template_id}-2": "10:30",
            },
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"{path}?notice=template_sent"
        (row,) = seeded.database.rows(
            "SELECT body, content_sid, status, author FROM messages WHERE direction = 'outbound'"
        )
        assert row.body == "Hola Ana, te recordamos tu cita de mañana a las 10:30. ¿Nos confirmas?"
        assert (row.content_sid, row.status, row.author) == (REMINDER_SID, "pending", "operator")
        page = seeded.operator.http.get(response.headers["location"])
        assert "Template queued for sending." in page.text

    def test_an_empty_variable_is_refused_keeping_what_was_typed(self, seeded):
        seeded.templates()
        path = seeded.thread(ANA, timedelta(hours=30))
        template_id = seeded.template_id()
        response = seeded.operator.post_form(
            f"{path}/template",
            path,
            {"template": REMINDER_SID, f"var-{template_id}-1": "Ana", f"var-{template_id}-2": " "},
        )
        assert response.status_code == 422
        assert "variable &#39;2&#39; is empty" in response.text
        assert (
            f'name="var-{template_id}-1" type="text" maxlength="1024" value="Ana"' in response.text
        )
        assert seeded.database.count("messages") == 1

    def test_a_pending_template_is_refused(self, seeded):
        seeded.templates()
        path = seeded.thread(ANA, timedelta(hours=30))
        pending_id = seeded.template_id(PENDING_SID)
        response = seeded.operator.post_form(
            f"{path}/template", path, {"template": PENDING_SID, f"var-{pending_id}-1": "Ana"}
        )
        assert response.status_code == 422
        assert "only approved templates can be sent" in text_of(response)
        assert seeded.database.count("messages") == 1

    def test_csrf_and_other_accounts(self, seeded):
        seeded.templates()
        path = seeded.thread(ANA, timedelta(hours=30))
        template_id = seeded.template_id()
        values = {
            "template": REMINDER_SID,
            f"var-{template_id}-1": "A",
            f"var-{template_id}-2": "B",
        }
        refused = seeded.operator.http.post(f"{path}/template", data=values)
        assert refused.status_code == 403

        async def theirs(session: AsyncSession) -> int:
            other = await add_account(session, "Clínica B", numbers={Channel.whatsapp: B_WHATSAPP})
            return await add_whatsapp_thread(session, other.id, LUIS, timedelta(hours=30))

        their_path = f"/conversations/whatsapp/{seeded.add(theirs)}"
        assert seeded.operator.http.get(their_path).status_code == 404
        response = seeded.operator.post_form(f"{their_path}/template", path, values)
        assert response.status_code == 404
        assert seeded.database.count("messages") == 2


def post_broadcast(seeded: Seeded, data: dict[str, str], csv: bytes | None = None) -> Any:
    files = {"csv": ("clientes.csv", csv, "text/csv")} if csv is not None else None
    token = seeded.operator.csrf("/broadcasts/new")
    return seeded.operator.http.post("/broadcasts", data={**data, "csrf_token": token}, files=files)


@sqlite_only
class TestNewBroadcast:
    def test_a_body_that_is_not_a_form_is_refused_with_why(self, seeded):
        token = seeded.operator.csrf("/broadcasts/new")
        json = seeded.operator.http.post(
            "/broadcasts", content=b"{}", headers={"content-type": "application/json"}
        )
        assert json.status_code == 415
        two_files = {
            "csv": ("a.csv", b"+34600111222\n", "text/csv"),
            "otro": ("b.csv", b"+34600333444\n", "text/csv"),
        }
        response = seeded.operator.http.post(
            "/broadcasts",
            data={"csrf_token": token, "channel": "sms", "body": "Hola"},
            files=two_files,
        )
        assert response.status_code == 400
        assert "too many files" in response.text.lower()
        assert seeded.database.count("broadcasts") == 0

    def test_a_spanish_excel_csv_with_template_variables(self, seeded):
        seeded.templates()
        csv = "\ufefftelefono;1;2\r\n+34 600 111 222;Ana;10:30\r\n+34600333444;Luis;12:00\r\n600;Eva;9:00\r\n"
        response = post_broadcast(
            seeded,
            {"channel": "whatsapp", "name": "Citas del jueves", "template": REMINDER_SID},
            csv.encode(),
        )
        assert response.status_code == 303, text_of(response)
        location = response.headers["location"]
        assert re.fullmatch(r"/broadcasts/whatsapp/\d+\?notice=created", location)
        rows = seeded.database.rows(
            "SELECT address, state, reason, variables FROM broadcast_recipients ORDER BY id"
        )
        assert [(r.address, r.state) for r in rows] == [
            ("+34600111222", "queued"),
            ("+34600333444", "queued"),
            ("600", "skipped"),
        ]
        assert "Luis" in str(rows[1].variables)
        page = seeded.operator.http.get(location)
        text = text_of(page)
        assert "Broadcast created" in text
        assert "Citas del jueves" in text
        assert "33% handed over: 1 of 3 recipients" in text
        assert "not a phone number in E.164 form" in text
        assert 'hx-get="/broadcasts/whatsapp/' in page.text  # still sending: polled

        listing = text_of(seeded.operator.http.get("/broadcasts"))
        assert "Citas del jueves" in listing
        assert "1 of 3" in listing

    def test_numbers_one_per_line_as_free_text_by_sms(self, seeded):
        response = post_broadcast(
            seeded,
            {
                "channel": "sms",
                "body": "Hoy cerramos a las 14:00.",
                "numbers": f"{ANA}\n\n{LUIS}\n",
            },
        )
        assert response.status_code == 303, text_of(response)
        assert seeded.database.scalar("SELECT count(*) FROM broadcast_recipients") == 2
        assert seeded.database.scalar("SELECT body FROM broadcasts") == "Hoy cerramos a las 14:00."

    def test_a_missing_variable_names_the_line_and_stores_nothing(self, seeded):
        seeded.templates()
        csv = b"telefono,1,2\n+34600111222,Ana,10:30\n+34600333444,Luis\n"
        response = post_broadcast(
            seeded, {"channel": "whatsapp", "name": "Citas", "template": REMINDER_SID}, csv
        )
        assert response.status_code == 422
        text = text_of(response)
        assert (
            "Not created: The file's line 3 (+346…44): template 'recordatorio_cita' needs {{2}}"
            in text
        )
        assert 'value="Citas"' in response.text  # what was typed is kept
        assert seeded.database.count("broadcasts") == 0
        assert seeded.database.count("broadcast_recipients") == 0

    def test_a_shared_value_fills_a_missing_column(self, seeded):
        seeded.templates()
        template_id = seeded.template_id()
        csv = b"telefono,1\n+34600111222,Ana\n"
        response = post_broadcast(
            seeded,
            {"channel": "whatsapp", "template": REMINDER_SID, f"var-{template_id}-2": "10:00"},
            csv,
        )
        assert response.status_code == 303, text_of(response)
        assert "10:00" in str(seeded.database.scalar("SELECT variables FROM broadcast_recipients"))

    @pytest.mark.parametrize(
        ("csv", "error"),
        [
            (
                b"telefono,1\n+34600111222,Ana,extra\n",
                "The file, line 2: 3 columns, but the header names 2",
            ),
            (
                b"+34600111222\n+34600333444,Ana\n",
                "The file, line 2: 2 columns, but the file has no header row",
            ),
            (
                b"telefono,nombre completo\n+34600111222,Ana\n",
                "The file, line 1, column 2: 'nombre completo' is not a template variable name",
            ),
            (
                b"telefono;1\n+34600111222;Ana\n;Luis\n",
                "The file, line 3: no phone number in the first column",
            ),
            (b"telefono,1\n", "The file, the file has no recipients, only a header row"),
        ],
    )
    def test_csv_errors_name_the_line(self, seeded, csv, error):
        response = post_broadcast(seeded, {"channel": "sms", "body": "Hola"}, csv)
        assert response.status_code == 422
        assert error in text_of(response)
        assert 'aria-invalid="true"' in response.text
        assert seeded.database.count("broadcasts") == 0

    def test_form_errors(self, seeded):
        response = post_broadcast(seeded, {"channel": "sms"})
        assert response.status_code == 422
        text = text_of(response)
        assert "Write the text to send, or choose a template." in text
        assert "Add the recipients: a CSV file, or numbers one per line." in text

    def test_csrf_required(self, seeded):
        response = seeded.operator.http.post(
            "/broadcasts",
            data={"channel": "sms", "body": "Hola", "numbers": ANA},
            files={"csv": ("c.csv", b"", "text/csv")},
        )
        assert response.status_code == 403
        assert seeded.database.count("broadcasts") == 0


@sqlite_only
class TestBroadcastPage:
    def make(self, seeded: Seeded, account_id: uuid.UUID | None = None) -> str:
        from platica.outreach import broadcasts

        async def create(session: AsyncSession) -> int:
            owner = account_id or seeded.account_id
            new = broadcasts.NewBroadcast(
                recipients=[broadcasts.Recipient(ANA), broadcasts.Recipient("12")],
                body="Mañana abrimos a las 9.",
                name="Aviso",
            )
            return (await broadcasts.create(session, owner, Channel.sms, new)).id

        return f"/broadcasts/sms/{seeded.add(create)}"

    def test_cancel_stops_it(self, seeded):
        path = self.make(seeded)
        assert seeded.operator.http.post(f"{path}/cancel", data={"x": "1"}).status_code == 403
        response = seeded.operator.post_form(f"{path}/cancel", path, {})
        assert response.status_code == 303
        page = seeded.operator.http.get(response.headers["location"])
        text = text_of(page)
        assert "Broadcast canceled" in text
        assert "Status: Canceled" in text
        assert "100% handed over: 2 of 2 recipients" in text
        assert "hx-get" not in page.text  # over: no more polling
        assert "Cancel broadcast" not in text
        again = seeded.operator.post_form(f"{path}/cancel", path, {})
        assert again.status_code == 303  # idempotent

    def test_polled_fragment(self, seeded):
        path = self.make(seeded)
        fragment = seeded.operator.http.get(f"{path}?fragment=progress")
        assert fragment.status_code == 200
        assert 'data-count="skipped">1<' in fragment.text
        version = re.search(r'"v": "([0-9a-f]+)"', fragment.text)
        assert version is not None
        unchanged = seeded.operator.http.get(f"{path}?fragment=progress&v={version[1]}")
        assert unchanged.status_code == 204

    def test_another_accounts_broadcast_is_404(self, seeded):
        async def other(session: AsyncSession) -> uuid.UUID:
            account = await add_account(session, "Clínica B", numbers={Channel.sms: "+15005550009"})
            return account.id

        path = self.make(seeded, seeded.add(other))
        assert seeded.operator.http.get(path).status_code == 404
        assert seeded.operator.http.get(path.replace("/sms/", "/whatsapp/")).status_code == 404
        assert seeded.operator.post_form(f"{path}/cancel", "/broadcasts", {}).status_code == 404
        assert seeded.database.scalar("SELECT status FROM broadcasts") == "sending"
        assert "Aviso" not in seeded.operator.http.get("/broadcasts").text
        for bad in ("/broadcasts/fax/1", "/broadcasts/sms/abc", f"/broadcasts/sms/{2**63}"):
            assert seeded.operator.http.get(bad).status_code == 404, bad


@sqlite_only
class TestBroadcastPace:
    def test_saved_and_refused(self, seeded):
        form = {**SETTINGS_FORM, "broadcast_mps": "50"}
        response = seeded.operator.post_form("/settings/whatsapp", "/settings", form)
        assert response.status_code == 303, response.text
        assert (
            seeded.database.scalar(
                "SELECT broadcast_mps FROM channel_configs WHERE channel = 'whatsapp'"
            )
            == 50
        )
        page = seeded.operator.http.get("/settings").text
        assert re.search(
            r'id="cfg-whatsapp-broadcast_mps" name="broadcast_mps" type="number" value="50"', page
        )

        for value, error in (
            ("0", "must be more than 0"),
            ("401", "must be at most 400"),
            ("x", "must be a number"),
        ):
            refused = seeded.operator.post_form(
                "/settings/sms", "/settings", {**SETTINGS_FORM, "broadcast_mps": value}
            )
            assert refused.status_code == 422, value
            assert f"Broadcast pace (messages/s): {error}" in html.unescape(refused.text)
        assert (
            seeded.database.scalar(
                "SELECT broadcast_mps FROM channel_configs WHERE channel = 'sms'"
            )
            == 1
        )


@sqlite_only
class TestSyncTemplates:
    def test_the_button_syncs_from_twilio_and_offers_them(self, database_url, live_server):
        with FakeTwilio() as twilio:
            sid = twilio.add_content(
                "recordatorio_cita", "Hola {{1}}, su cita es el {{2}}.", variables={"1": "Ana"}
            )
            settings = make_settings(
                database_url, TWILIO_API_BASE_URL=twilio.url, TWILIO_CONTENT_BASE_URL=twilio.url
            )
            server = live_server(settings, worker=False)
            account_id, key = default_account_key(database_url)
            operator = DashboardClient(server)
            database = Database(database_url)
            try:
                assert operator.log_in(key).status_code == 303
                seeded = Seeded(operator, database, database_url, account_id)
                thread = seeded.thread(ANA, timedelta(hours=30))
                page = operator.http.get(thread)
                assert "Sync templates from Twilio" in page.text

                synced = operator.post_form(f"{thread}/templates/sync", thread, {})

                assert synced.status_code == 303
                shown = operator.http.get(synced.headers["location"])
                assert "Templates synced from Twilio." in text_of(shown)
                assert "recordatorio_cita (es)" in text_of(shown)
                assert database.scalar("SELECT sid FROM templates") == sid
                forged = operator.http.post(f"{thread}/templates/sync", data={"x": "1"})
                assert forged.status_code == 403
            finally:
                operator.close()
                database.engine.dispose()
