"""The listing behind the inbox (conversations/inbox.py): every filter in SQL, alone and combined,
and keyset paging, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica import db
from platica.conversations.inbox import STATES, InboxFilter, encode_cursor, list_conversations
from platica.dashboard import display
from platica.errors import BadRequest
from platica.models import Channel, ConversationStatus, utcnow
from tests.conftest import Database
from tests.dashboard.inbox_data import Seed, add_account, store

# Account A's conversations, oldest first, each in the state its name's comment says.
MATRIX = {
    "ana": Seed("+5215512345678"),  # active
    "beto": Seed(
        "+5215587654321",
        "¿Cuánto cuesta el envío?",
        "whatsapp",
        name="Beto Ramírez",
        handoff="open",
    ),  # handed off, no end
    "carla": Seed("+5213312345678", "Quiero pagar 100% por adelantado", handoff="lapsed"),  # active
    "dani": Seed(
        "+5218112345678",
        "HOLA, ¿ENVÍAN A MONTERREY?",
        "whatsapp",
        name="ÁNGEL Dávila",
        opted_out=True,
    ),  # opted out
    "eva": Seed("+5215500001111", "Gracias, hasta luego", status="closed"),  # closed
    "fer": Seed(
        "+5215500002222",
        "mi_usuario es fer",
        "whatsapp",
        name="Fer",
        opted_out=True,
        handoff="ahead",
    ),  # opted out (wins over the handoff)
    "gil": Seed("+5215500003333", "1000 pesos", status="closed", opted_out=True),  # closed
    "hugo": Seed("+5215500004444", "¿Hay tamales?", "whatsapp", handoff="ahead"),  # handed off
}
BY_STATE = {
    "active": {"ana", "carla"},
    "handed_off": {"beto", "hugo"},
    "opted_out": {"dani", "fer"},
    "closed": {"eva", "gil"},
}

SEARCHES = [
    ("monterrey", {"ana", "dani"}),  # in a message, whatever its case
    ("MONTERREY", {"ana", "dani"}),
    ("5512345678", {"ana"}),  # in the contact's number
    ("+52155", {"ana", "beto", "eva", "fer", "gil", "hugo"}),
    ("ramírez", {"beto"}),  # in the contact's name
    ("RAMÍREZ", {"beto"}),
    ("ángel", {"dani"}),  # a capital SQLite's lower() would not fold
    ("dÁVILA", {"dani"}),
    ("envío", {"ana", "beto"}),
    ("100%", {"carla"}),  # % is a plain character: "1000 pesos" does not match
    ("%", {"carla"}),
    ("_", {"fer"}),  # so is _
    ("o_u", set()),
    ("tamales?", {"hugo"}),  # ? and * are plain characters too
    ("tamal*", set()),
    ("[h]", set()),
    ("/", set()),
    ("nadie dijo esto", set()),
]

COMBINED = [
    (InboxFilter(state="active", search="monterrey"), {"ana"}),
    (InboxFilter(state="opted_out", search="Monterrey"), {"dani"}),
    (
        InboxFilter(channels=(Channel.whatsapp,), state="opted_out", search="ángel"),
        {"dani"},
    ),
    (InboxFilter(channels=(Channel.sms,), state="closed"), {"eva", "gil"}),
    (InboxFilter(channels=(Channel.whatsapp,), state="handed_off"), {"beto", "hugo"}),
    (InboxFilter(channels=(Channel.sms,), state="handed_off"), set()),
    (InboxFilter(channels=(Channel.sms,), search="monterrey"), {"ana"}),
    (InboxFilter(status=ConversationStatus.closed, search="1000"), {"gil"}),
    (
        InboxFilter(channels=(Channel.whatsapp,), status=ConversationStatus.active),
        {"beto", "dani", "fer", "hugo"},
    ),
    (InboxFilter(channels=()), set()),
]


def _describe(filters: InboxFilter) -> str:
    channels = "+".join(channel.value for channel in filters.channels) or "none"
    parts = [channels, filters.status or "", filters.state or "", filters.search or ""]
    return "-".join(part for part in parts if part)


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = db.create_engine(database_url)
    try:
        async with db.create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


class Matrix:
    """MATRIX stored for account A, and one conversation of account B with Ana's very words."""

    def __init__(self, database: Database) -> None:
        self.a = add_account(database, "Tacos Ana")
        self.b = add_account(database, "Panadería B")
        self.ids = dict(zip(MATRIX, store(database, self.a, list(MATRIX.values())), strict=True))
        (self.other,) = store(database, self.b, [Seed("+5215512345678")])
        self.names = {ident: name for name, ident in self.ids.items()}

    async def names_of(
        self,
        session: AsyncSession,
        filters: InboxFilter,
        account_id: uuid.UUID | str | None = "a",
    ) -> list[str]:
        """The names listed, in the listing's order (newest first): one page holds them all."""
        account = self.a if account_id == "a" else account_id
        assert not isinstance(account, str)
        views, cursor = await list_conversations(session, account, filters, limit=100)
        assert cursor is None
        return [self.names.get(v.conversation.id, "other") for v in views]


@pytest.fixture
def matrix(database: Database) -> Matrix:
    return Matrix(database)


def newest_first(names: set[str]) -> list[str]:
    return [name for name in reversed(MATRIX) if name in names]


class TestFilters:
    async def test_no_filter_lists_every_conversation_of_the_account(self, matrix, session):
        assert await matrix.names_of(session, InboxFilter()) == newest_first(set(MATRIX))

    @pytest.mark.parametrize("state", STATES)
    async def test_each_state_alone(self, matrix, session, state):
        views, _ = await list_conversations(session, matrix.a, InboxFilter(state=state), limit=100)
        assert [matrix.names[v.conversation.id] for v in views] == newest_first(BY_STATE[state])
        # The SQL says what the rows show: display.conversation_state, the same rule in Python.
        assert {display.conversation_state(v) for v in views} == {state}

    def test_the_states_are_the_ones_the_dashboard_offers(self):
        assert tuple(display.CONVERSATION_STATES) == STATES

    @pytest.mark.parametrize("channel", list(Channel))
    async def test_each_channel_alone(self, matrix, session, channel):
        names = {name for name, seed in MATRIX.items() if seed.channel == channel.value}
        assert await matrix.names_of(session, InboxFilter(channels=(channel,))) == newest_first(
            names
        )

    @pytest.mark.parametrize(
        ("status", "names"),
        [
            (ConversationStatus.active, set(MATRIX) - BY_STATE["closed"]),
            (ConversationStatus.closed, BY_STATE["closed"]),
        ],
    )
    async def test_the_stored_status_alone(self, matrix, session, status, names):
        assert await matrix.names_of(session, InboxFilter(status=status)) == newest_first(names)

    @pytest.mark.parametrize(
        ("search", "names"),
        [pytest.param(search, names, id=search) for search, names in SEARCHES],
    )
    async def test_search_alone(self, matrix, session, search, names):
        assert await matrix.names_of(session, InboxFilter(search=search)) == newest_first(names)

    @pytest.mark.parametrize(
        ("filters", "names"),
        [pytest.param(filters, names, id=_describe(filters)) for filters, names in COMBINED],
    )
    async def test_filters_combined(self, matrix, session, filters, names):
        assert await matrix.names_of(session, filters) == newest_first(names)

    async def test_another_account_is_never_listed_but_every_account_is_for_the_admin(
        self, matrix, session
    ):
        mine = await matrix.names_of(session, InboxFilter(search="5512345678"))
        assert mine == ["ana"]
        everyone = await matrix.names_of(session, InboxFilter(search="5512345678"), None)
        assert everyone == ["other", "ana"]
        only_b = await matrix.names_of(session, InboxFilter(), matrix.b)
        assert only_b == ["other"]

    async def test_a_handoff_ends_on_time(self, matrix, session, database):
        database.execute(
            "UPDATE conversations SET handoff_until = :past WHERE id = :id",
            past=utcnow() - timedelta(seconds=1),
            id=matrix.ids["hugo"],
        )
        assert await matrix.names_of(session, InboxFilter(state="handed_off")) == ["beto"]
        assert await matrix.names_of(session, InboxFilter(state="active")) == newest_first(
            {"ana", "carla", "hugo"}
        )


class TestPaging:
    async def _walk(self, session, account_id, filters, limit):
        pages: list[list[int]] = []
        cursor = None
        while True:
            views, cursor = await list_conversations(
                session, account_id, filters, limit=limit, cursor=cursor
            )
            pages.append([v.conversation.id for v in views])
            assert len(pages) < 50, "the cursor never ran out"
            if cursor is None:
                return pages

    async def test_every_conversation_once_newest_first_across_pages(self, database, session):
        account = add_account(database, "Tacos Ana")
        moment = utcnow() - timedelta(hours=2)
        # Three share a timestamp (ids break the tie), over both channels.
        times = [moment - timedelta(minutes=m) for m in (9, 5, 5, 5, 3, 1, 0)]
        seeds = [
            Seed(f"+52155123456{index:02d}", channel="sms" if index % 2 else "whatsapp")
            for index in range(7)
        ]
        ids = store(database, account, seeds, times=times)
        expected = [ident for _, ident in sorted(zip(times, ids, strict=True), reverse=True)]

        pages = await self._walk(session, account, InboxFilter(), 2)

        assert [len(page) for page in pages] == [2, 2, 2, 1]
        assert [ident for page in pages for ident in page] == expected

    async def test_paging_a_filter(self, matrix, session):
        pages = await self._walk(session, matrix.a, InboxFilter(state="closed"), 1)
        assert pages == [[matrix.ids["gil"]], [matrix.ids["eva"]]]

    async def test_the_last_page_has_no_cursor(self, matrix, session):
        views, cursor = await list_conversations(
            session, matrix.a, InboxFilter(), limit=len(MATRIX)
        )
        assert len(views) == len(MATRIX)
        assert cursor is None

    @pytest.mark.parametrize("cursor", ["garbage", "!!!", "MjAyNi0wMS0wMQ"], ids=str)
    async def test_a_cursor_it_did_not_make_is_a_bad_request(self, matrix, session, cursor):
        with pytest.raises(BadRequest, match="cursor"):
            await list_conversations(session, matrix.a, InboxFilter(), limit=5, cursor=cursor)

    async def test_the_cursor_is_the_apis(self, matrix, session):
        """GET /api/{channel}/conversations hands out the same cursors, so they stay valid."""
        views, cursor = await list_conversations(session, matrix.a, InboxFilter(), limit=3)
        assert cursor == encode_cursor(views[-1].conversation)
