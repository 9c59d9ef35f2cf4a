"""A conversation's media on the dashboard over plain HTTP: the thread shows each item from
Plática's own route (never Twilio's URL or credentials), and the route serves an item's bytes
only to its account's operators (or the admin): the copy Plática kept, or Twilio's fetched for
the request; on SQLite and PostgreSQL, with the fake Twilio behind the live server."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica.media.serving import CACHE_SECONDS
from tests.dashboard.client import DashboardClient
from tests.dashboard.media_data import (
    INVOICE,
    PHOTO,
    TRANSCRIPT,
    VOICE,
    MediaThread,
    seed_media_thread,
)
from tests.factories import ACCOUNT_SID, AUTH_TOKEN
from tests.records import add_account, default_account_key, in_session
from tests.stack import ADMIN_TOKEN, Stack, live_stack

OTHER_CONTACT = "+5219515550199"


@dataclass
class Seeded:
    stack: Stack
    operator: DashboardClient  # logged in with account A's (the default account's) key
    ours: MediaThread
    theirs: MediaThread  # account B's

    def get(self, path: str, client: DashboardClient | None = None) -> httpx.Response:
        return (client or self.operator).http.get(path)


@pytest.fixture
def seeded(database_url, live_server) -> Iterator[Seeded]:
    with live_stack(database_url, live_server) as stack:
        account_id, key = default_account_key(database_url)
        invoice_url = stack.twilio.add_media(INVOICE, "application/pdf")

        async def seed(session: AsyncSession) -> tuple[MediaThread, MediaThread]:
            ours = await seed_media_thread(session, account_id, invoice_url=invoice_url)
            other = await add_account(session, "Panadería B")
            theirs = await seed_media_thread(session, other.id, address=OTHER_CONTACT)
            return ours, theirs

        ours, theirs = in_session(database_url, seed)
        operator = DashboardClient(stack.server)
        assert operator.log_in(key).status_code == 303
        try:
            yield Seeded(stack, operator, ours, theirs)
        finally:
            operator.close()


def assert_served(
    response: httpx.Response, content: bytes, content_type: str, disposition: str
) -> None:
    assert response.status_code == 200, response.text
    assert response.content == content
    assert response.headers["content-type"] == content_type
    assert re.fullmatch(disposition, response.headers["content-disposition"])
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == f"private, max-age={CACHE_SECONDS}"
    assert "sandbox" in response.headers["content-security-policy"]
    assert "set-cookie" not in response.headers


class TestMediaRoute:
    def test_kept_bytes_are_served_with_their_type_and_headers(self, seeded):
        ours = seeded.ours
        voice = seeded.get(ours.media_path(ours.voice))
        assert_served(voice, VOICE, "audio/ogg", rf'inline; filename="audio-{ours.voice}\.ogg"')
        photo = seeded.get(ours.media_path(ours.photo))
        assert_served(photo, PHOTO, "image/jpeg", rf'inline; filename="image-{ours.photo}\.jpg"')
        # A player asks for parts (an Ogg voice note's length is in its last page).
        tail = seeded.operator.http.get(ours.media_path(ours.voice), headers={"Range": "bytes=-64"})
        assert tail.status_code == 206
        assert tail.content == VOICE[-64:]
        assert (
            tail.headers["content-range"]
            == f"bytes {len(VOICE) - 64}-{len(VOICE) - 1}/{len(VOICE)}"
        )
        # Unchanged since the browser kept it: nothing to send again.
        again = seeded.operator.http.get(
            ours.media_path(ours.photo), headers={"If-None-Match": photo.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
        assert seeded.stack.twilio.media_requests == []

    def test_without_kept_bytes_twilio_copy_is_fetched_and_not_stored(self, seeded):
        ours = seeded.ours
        invoice = seeded.get(ours.media_path(ours.invoice))
        assert_served(
            invoice,
            INVOICE,
            "application/pdf",
            rf'attachment; filename="document-{ours.invoice}\.pdf"',
        )
        assert "etag" not in invoice.headers
        requests = seeded.stack.twilio.media_requests
        assert [(r["method"], r["authorised"], r["status"]) for r in requests] == [
            ("GET", True, 307)
        ]
        row = seeded.stack.database.rows(
            "SELECT state, content, size_bytes FROM media WHERE id = :id", id=ours.invoice
        )[0]
        assert (row.state, row.content, row.size_bytes) == ("pending", None, None)

    def test_twilio_failing_for_now_is_502_and_said_so(self, seeded):
        seeded.stack.twilio.fail_always("media:500")
        response = seeded.get(seeded.ours.media_path(seeded.ours.invoice))
        seeded.stack.twilio.fail_always(None)
        assert response.status_code == 502
        assert "Twilio answered 500" in html.unescape(response.text)
        assert "try again later" in response.text

    def test_what_cannot_be_served_is_404_with_why(self, seeded):
        ours = seeded.ours
        location = seeded.get(ours.media_path(ours.location))
        assert location.status_code == 404
        assert "is a location: it has no file" in location.text

        seeded.stack.database.execute(
            "UPDATE media SET url = 'https://example.com/factura.pdf' WHERE id = :id",
            id=ours.invoice,
        )
        refused = seeded.get(ours.media_path(ours.invoice))
        assert refused.status_code == 404
        assert "not a media URL of this Twilio account" in refused.text

        seeded.stack.database.execute(
            "UPDATE media SET deleted_at = created_at WHERE id = :id", id=ours.invoice
        )
        deleted = seeded.get(ours.media_path(ours.invoice))
        assert deleted.status_code == 404
        assert "Twilio&#39;s copy was deleted" in deleted.text
        assert seeded.stack.twilio.media_requests == []

    def test_another_accounts_media_is_404(self, seeded):
        ours, theirs = seeded.ours, seeded.theirs
        for path in (
            theirs.media_path(theirs.voice),  # their conversation
            ours.media_path(theirs.voice),  # their item under our conversation
            theirs.media_path(ours.voice),  # ours under theirs
            ours.media_path(ours.voice).replace("/whatsapp/", "/sms/"),  # another channel
            ours.media_path(99_999_999),
            ours.media_path(2**63),
            f"{ours.path}/media/abc",
        ):
            response = seeded.get(path)
            assert response.status_code == 404, path
            assert "belongs to another account" in response.text, path
            assert response.content.find(VOICE[:64]) == -1

    def test_admin_sees_every_account(self, seeded):
        admin = DashboardClient(seeded.stack.server)
        try:
            assert admin.log_in(ADMIN_TOKEN).status_code == 303
            theirs = seeded.theirs
            response = seeded.get(theirs.media_path(theirs.voice), admin)
            assert_served(response, VOICE, "audio/ogg", r'inline; filename="audio-\d+\.ogg"')
            page = seeded.get(theirs.path, admin)
            assert page.status_code == 200
            assert f'src="{theirs.media_path(theirs.voice)}"' in page.text
        finally:
            admin.close()

    def test_logged_out_is_sent_to_log_in(self, seeded):
        anonymous = DashboardClient(seeded.stack.server)
        try:
            response = seeded.get(seeded.ours.media_path(seeded.ours.voice), anonymous)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/login?next=")
            assert response.content == b""
        finally:
            anonymous.close()


class TestThread:
    def test_items_come_from_platica_never_from_twilio(self, seeded):
        ours = seeded.ours
        page = seeded.get(ours.path)
        assert page.status_code == 200
        text = page.text
        for secret in (seeded.stack.twilio.url, "twilio.com", ACCOUNT_SID, AUTH_TOKEN, "/Media/ME"):
            assert secret not in text, secret
        csp = page.headers["content-security-policy"]
        assert "img-src 'self' data:;" in csp
        assert "media-src 'self';" in csp
        assert "https:" not in csp

        voice = ours.media_path(ours.voice)
        assert re.search(
            rf'<audio id="media-{ours.voice}-player" controls preload="none" src="{voice}"'
            r' aria-label="Voice note from the contact, 0:04"',
            text,
        )
        assert html.escape(TRANSCRIPT, quote=False) in text
        photo = ours.media_path(ours.photo)
        assert f'<img src="{photo}" loading="lazy" alt="Image from the contact' in text
        assert f'href="{photo}" target="_blank" rel="noopener"' in text
        assert (
            'href="https://www.openstreetmap.org/?mlat=17.065418&amp;mlon=-96.723649'
            '#map=17/17.065418/-96.723649" target="_blank" rel="noopener noreferrer"'
        ) in text
        assert "Panadería La Espiga" in text
        # The invoice is fetched from Twilio through Plática when opened; meanwhile: reading.
        assert f'<a class="media-file" href="{ours.media_path(ours.invoice)}">' in text
        assert "Document (PDF)" in text
        assert "Reading…" in text

    def test_states_in_words(self, seeded):
        ours = seeded.ours
        seeded.stack.database.execute(
            "UPDATE media SET state = 'failed', error = 'not transcribed: no OpenAI key"
            " (OPENAI_API_KEY)', text = NULL WHERE id = :id",
            id=ours.voice,
        )
        seeded.stack.database.execute(
            "UPDATE media SET state = 'understood', text = :text WHERE id = :id",
            text="Factura 1234 — Total: 560 MXN",
            id=ours.invoice,
        )
        text = seeded.get(ours.path).text
        assert "Could not be read: not transcribed: no OpenAI key (OPENAI_API_KEY)" in text
        # Its bytes are kept: it can still be listened to.
        assert f'src="{ours.media_path(ours.voice)}"' in text
        assert "Reading…" not in text
        assert re.search(
            rf'<details id="media-{ours.invoice}-text" class="media-details" hx-preserve="true">'
            r"\s*<summary>Text of the document</summary>\s*"
            r'<div class="media-text">Factura 1234 — Total: 560 MXN</div>',
            text,
        )

        seeded.stack.database.execute("UPDATE media SET url = NULL WHERE id = :id", id=ours.invoice)
        text = seeded.get(ours.path).text
        # Nothing left to open: a label, not a link.
        assert f'href="{ours.media_path(ours.invoice)}"' not in text
        assert "Document (PDF)" in text
