"""The inbox page over plain HTTP: its filters and search in the URL, "Older →" links that walk
every conversation once, past the old cap of 2,000 conversations, and a clear 400 for a broken
link; on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from platica.accounts import create_api_key
from platica.dashboard.inbox import INBOX_MAX
from platica.models import utcnow
from tests.api.conftest import in_session
from tests.conftest import Database, make_settings
from tests.dashboard.client import DashboardClient
from tests.dashboard.inbox_data import Seed, default_account, store

ROW = re.compile(r'data-conversation="\w+/(\d+)"')
STATUS = re.compile(r'<span class="badge status status-(\w+)">')
OLDER = re.compile(r'<a class="button secondary" href="([^"]+)" rel="next">Older →</a>')
NEWEST = re.compile(r'<a class="button secondary" href="([^"]+)">← Newest</a>')
POLL = re.compile(r'hx-get="([^"]+)"')


@dataclass
class Inbox:
    client: DashboardClient
    database: Database
    account_id: uuid.UUID

    def get(self, path: str = "/", **params: str) -> httpx.Response:
        return self.client.http.get(path, params=params or None)

    def page(self, path: str = "/", **params: str) -> str:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.text

    def walk(self, **params: str) -> list[list[int]]:
        """Every page from the first, following "Older →": the conversation ids of each."""
        pages = [self.page("/", **params)]
        while (link := older(pages[-1])) is not None:
            assert len(pages) < 100, "the Older links never ran out"
            pages.append(self.page(link))
        return [ids(page) for page in pages]


def ids(page: str) -> list[int]:
    return [int(found) for found in ROW.findall(page)]


def older(page: str) -> str | None:
    found = OLDER.search(page)
    return html.unescape(found[1]) if found else None


@pytest.fixture
def inbox(database_url, live_server, database) -> Iterator[Inbox]:
    """The default account's operator, logged in with an API key; no worker."""
    server = live_server(make_settings(database_url), worker=False)
    account_id = default_account(database)
    key = in_session(database_url, lambda session: create_api_key(session, account_id))
    client = DashboardClient(server)
    assert client.log_in(key).status_code == 303
    yield Inbox(client, database, account_id)
    client.close()


class TestFilters:
    def test_channel_state_and_search_in_the_url(self, inbox):
        ana, beto, dani, eva = store(
            inbox.database,
            inbox.account_id,
            [
                Seed("+5215512345678"),
                Seed("+5215587654321", "¿Hacen pedidos?", "whatsapp", handoff="open"),
                Seed("+5218112345678", "HOLA, ¿ENVÍAN A MONTERREY?", "whatsapp", opted_out=True),
                Seed("+5215500001111", "Precio 100% final", status="closed"),
            ],
        )
        every = inbox.page()
        assert ids(every) == [eva, dani, beto, ana]
        assert STATUS.findall(every) == ["closed", "opted_out", "handed_off", "active"]
        assert ids(inbox.page(status="handed_off")) == [beto]
        assert ids(inbox.page(channel="sms")) == [eva, ana]
        assert ids(inbox.page(q="monterrey")) == [dani, ana]
        assert ids(inbox.page(q="Monterrey", channel="whatsapp", status="opted_out")) == [dani]
        assert ids(inbox.page(q="monterrey", status="active")) == [ana]
        assert ids(inbox.page(q="100%")) == [eva]
        assert ids(inbox.page(q="%")) == [eva]
        assert ids(inbox.page(q="  5512345678 ")) == [ana]
        # The form shows what was asked for, and an empty result says the filters did it.
        nothing = inbox.page(q="pan dulce", channel="sms")
        assert ids(nothing) == []
        assert 'value="pan dulce"' in nothing
        assert "No conversations match these filters." in nothing
        # Filters the inbox does not offer are ignored, as before.
        assert ids(inbox.page(status="archived", channel="fax")) == [eva, dani, beto, ana]


class TestPaging:
    def test_older_links_walk_every_conversation_once(self, inbox):
        moment = utcnow() - timedelta(hours=1)
        # Two pairs share a timestamp; both channels.
        times = [moment - timedelta(minutes=m) for m in (7, 6, 6, 4, 3, 3, 1)]
        seeds = [
            Seed(f"+52155123456{n:02d}", channel="whatsapp" if n % 3 else "sms") for n in range(7)
        ]
        made = store(inbox.database, inbox.account_id, seeds, times=times)
        expected = [ident for _, ident in sorted(zip(times, made, strict=True), reverse=True)]

        pages = inbox.walk(limit="3")

        assert [len(page) for page in pages] == [3, 3, 1]
        assert [ident for page in pages for ident in page] == expected

    def test_a_later_page_links_back_and_polls_itself(self, inbox):
        store(inbox.database, inbox.account_id, [Seed(f"+521551234560{n}") for n in range(3)])
        first = inbox.page(limit="2", q="envío")
        assert NEWEST.search(first) is None
        link = older(first)
        assert link is not None
        assert "q=env%C3%ADo" in link
        assert "limit=2" in link
        second = inbox.page(link)
        newest = NEWEST.search(second)
        assert newest is not None
        assert "cursor" not in newest[1]
        assert older(second) is None
        poll = POLL.search(second)
        assert poll is not None
        poll_url = html.unescape(poll[1])
        assert "fragment=list" in poll_url
        assert "cursor=" in poll_url
        fragment = inbox.get(poll_url)
        assert fragment.status_code == 200
        assert ids(fragment.text) == ids(second)

    @pytest.mark.parametrize(
        "cursor",
        ["garbage", "MjAyNi0wMS0wMQ", "bm90IGEgZGF0ZXwxMg", "é"],
        ids=["garbage", "no-id", "not-a-date", "not-base64"],
    )
    @pytest.mark.parametrize("fragment", ["", "list"])
    def test_a_broken_cursor_is_a_clear_400(self, inbox, cursor, fragment):
        params = {"cursor": cursor, **({"fragment": fragment} if fragment else {})}
        response = inbox.get(**params)
        assert response.status_code == 400
        assert "Broken link" in response.text
        assert "Start again from the newest conversations." in response.text


class TestPastTheOldCap:
    """The inbox used to look at 2,000 conversations at most for the states it filtered in
    Python (handed off, opted out) and to stop "Show more" at 500: whatever lay past them was
    silently missing."""

    def test_thousands_of_conversations_are_all_reachable(self, inbox):
        count = 2_100
        # The oldest is handed off; 2,100 newer ones, all writing about Monterrey, are active.
        seeds = [Seed("+5215500000000", "Hola, ¿hay alguien?", handoff="open")] + [
            Seed(f"+52155{n:08d}", "Hola, ¿tienen envío a Monterrey?") for n in range(1, count + 1)
        ]
        made = store(inbox.database, inbox.account_id, seeds)
        handed_off, oldest_active = made[0], made[1]

        assert ids(inbox.page(status="handed_off")) == [handed_off]

        pages = inbox.walk(status="active", q="monterrey", limit=str(INBOX_MAX))
        walked = [ident for page in pages for ident in page]
        assert len(pages) == -(-count // INBOX_MAX)
        assert len(walked) == len(set(walked)) == count
        assert walked == sorted(made[1:], reverse=True)
        assert walked[-1] == oldest_active
