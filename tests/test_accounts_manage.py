"""`platica accounts set-number | rename | delete | keys list`: accounts named by id or name, their
numbers changed (E.164, one owner per channel), renamed, and deleted with all their data."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from platica.accounts import create_api_key
from platica.cli import app
from platica.config import get_settings
from platica.db import Base
from platica.models import (
    Broadcast,
    BroadcastRecipient,
    Channel,
    DashboardSession,
    Direction,
    IdempotencyKey,
    MediaKind,
    ReplyState,
    Template,
    TemplateApproval,
    WebhookLog,
    utcnow,
)
from tests.conftest import Database
from tests.factories import CONTACT
from tests.records import add_account, add_conversation, add_media, add_message, in_session
from tests.test_cli import invoke

SOL_SMS = "+5215512345678"
SOL_WHATSAPP = "+5215587654321"
LUNA_SMS = "+5215511112222"
# Every table holding an account's rows: a new one is covered by the delete test at once.
ACCOUNT_TABLES = [table for table in Base.metadata.sorted_tables if "account_id" in table.c]


async def seed_account(session: AsyncSession, name: str, numbers: dict[Channel, str]) -> uuid.UUID:
    """An account with a row in every table that holds an account's rows."""
    account = await add_account(session, name, numbers=numbers)
    await create_api_key(session, account.id)
    conversation = await add_conversation(session, account.id, CONTACT, Channel.sms)
    inbound = await add_message(
        session, conversation, body="Hola, ¿tienen pan de muerto?", reply_state=ReplyState.answered
    )
    reply = await add_message(
        session, conversation, Direction.outbound, body="¡Sí! Hasta las 8.", reply_to_id=inbound.id
    )
    await add_media(session, inbound, MediaKind.image)
    template = Template(
        account_id=account.id,
        sid="HX" + secrets.token_hex(16),
        name="bienvenida",
        approval=TemplateApproval.approved,
    )
    session.add(template)
    await session.flush()
    broadcast = Broadcast(
        account_id=account.id, channel=Channel.whatsapp, template_id=template.id, total=1
    )
    session.add(broadcast)
    await session.flush()
    session.add_all(
        [
            BroadcastRecipient(
                broadcast_id=broadcast.id,
                account_id=account.id,
                address=CONTACT,
                message_id=reply.id,
            ),
            IdempotencyKey(
                account_id=account.id, key="pedido-1", request_hash="0" * 64, message_id=reply.id
            ),
            WebhookLog(
                endpoint="sms",
                account_id=account.id,
                status_code=200,
                outcome="accepted",
                params={"From": CONTACT, "Body": "Hola"},
            ),
            DashboardSession(
                id_hash=secrets.token_hex(32),
                account_id=account.id,
                kind="api_key",
                expires_at=utcnow() + timedelta(hours=1),
            ),
        ]
    )
    await session.flush()
    return account.id


def typing(text: str, *args: str) -> Result:
    """`platica ARGS` with `text` typed on its standard input."""
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args), input=text)


def rows_of(database: Database, account_id: uuid.UUID) -> dict[str, int]:
    """The account's rows, counted per table."""
    counts = {}
    with database.engine.connect() as connection:
        for table in ACCOUNT_TABLES:
            query = sa.select(sa.func.count()).where(table.c.account_id == account_id)
            counts[table.name] = int(connection.execute(query).scalar_one())
    return counts


@pytest.fixture
def two_accounts(use_database: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Two accounts, Panadería Sol (SMS and WhatsApp) and Tortillería Luna (SMS), each with
    data in every table."""

    async def seed(session: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
        sol = await seed_account(
            session, "Panadería Sol", {Channel.sms: SOL_SMS, Channel.whatsapp: SOL_WHATSAPP}
        )
        luna = await seed_account(session, "Tortillería Luna", {Channel.sms: LUNA_SMS})
        return sol, luna

    return in_session(use_database, seed)


def numbers_of(database: Database, account_id: uuid.UUID) -> dict[str, str]:
    table = Base.metadata.tables["channel_configs"]
    query = sa.select(table.c.channel, table.c.phone_number).where(table.c.account_id == account_id)
    with database.engine.connect() as connection:
        return {row.channel: row.phone_number for row in connection.execute(query)}


class TestSetNumber:
    def test_changes_a_number_by_name(self, two_accounts, database: Database):
        sol, _ = two_accounts

        result = invoke("accounts", "set-number", "Panadería Sol", "--sms", "+5215500001111")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == f"SMS: +5215500001111 (was {SOL_SMS})."
        assert numbers_of(database, sol) == {"sms": "+5215500001111", "whatsapp": SOL_WHATSAPP}

    def test_adds_a_channel_by_id(self, two_accounts, database: Database):
        _, luna = two_accounts

        result = invoke(
            "accounts", "set-number", str(luna), "--whatsapp", "whatsapp:+5215533334444"
        )

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == "WhatsApp: +5215533334444 (new channel)."
        assert numbers_of(database, luna) == {"sms": LUNA_SMS, "whatsapp": "+5215533334444"}
        # The new channel has the defaults of a channel config: the AI on, Spanish, and the
        # built-in texts (NULL: the language's own, platica/texts.py).
        assert (
            database.scalar(
                "SELECT count(*) FROM channel_configs WHERE phone_number = '+5215533334444'"
                " AND ai_enabled AND language = 'es' AND system_prompt IS NULL"
                " AND fallback_message IS NULL"
            )
            == 1
        )

    def test_removes_a_channel(self, two_accounts, database: Database):
        sol, _ = two_accounts

        result = invoke("accounts", "set-number", "Panadería Sol", "--remove", "whatsapp")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == (
            f"WhatsApp: {SOL_WHATSAPP} removed, with the channel's settings."
        )
        assert numbers_of(database, sol) == {"sms": SOL_SMS}
        # Its conversations stay.
        assert rows_of(database, sol)["conversations"] == 1

    def test_same_number_again_changes_nothing(self, two_accounts):
        result = invoke("accounts", "set-number", "Panadería Sol", "--sms", SOL_SMS)

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == f"SMS: {SOL_SMS}, unchanged."

    def test_number_of_another_account_is_refused_naming_it(self, two_accounts, database: Database):
        sol, luna = two_accounts

        result = invoke("accounts", "set-number", "Panadería Sol", "--sms", LUNA_SMS)

        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: sms number {LUNA_SMS} already belongs to account 'Tortillería Luna' ({luna})\n"
        )
        assert numbers_of(database, sol)["sms"] == SOL_SMS

    def test_a_number_may_be_sms_for_one_and_whatsapp_for_another(
        self, two_accounts, database: Database
    ):
        _, luna = two_accounts

        result = invoke("accounts", "set-number", "Tortillería Luna", "--whatsapp", SOL_SMS)

        assert result.exit_code == 0, result.output
        assert numbers_of(database, luna)["whatsapp"] == SOL_SMS

    def test_the_change_is_all_or_nothing(self, two_accounts, database: Database):
        sol, _ = two_accounts

        result = invoke(
            "accounts", "set-number", str(sol), "--whatsapp", "+5215599990000", "--sms", LUNA_SMS
        )

        assert result.exit_code == 1
        assert numbers_of(database, sol) == {"sms": SOL_SMS, "whatsapp": SOL_WHATSAPP}

    @pytest.mark.parametrize("number", ["5215512345678", "+0123456789", "+52 55 1234", "hola"])
    def test_not_e164(self, two_accounts, number):
        result = invoke("accounts", "set-number", "Panadería Sol", "--sms", number)

        assert result.exit_code == 2
        assert "--sms" in result.stderr
        assert "E.164" in result.stderr

    def test_nothing_to_do(self, two_accounts):
        result = invoke("accounts", "set-number", "Panadería Sol")

        assert result.exit_code == 2
        assert "--whatsapp +E164, --sms +E164 or --remove CHANNEL" in result.stderr

    def test_set_and_remove_the_same_channel(self, two_accounts):
        result = invoke(
            "accounts", "set-number", "Panadería Sol", "--sms", "+5215500001111", "--remove", "sms"
        )

        assert result.exit_code == 2
        assert "sms is both given a number and removed" in result.stderr

    def test_unknown_account(self, two_accounts):
        result = invoke("accounts", "set-number", "Panadería Nube", "--sms", "+5215500001111")

        assert result.exit_code == 1
        assert result.stderr == "Error: no account with id or name 'Panadería Nube'\n"

    def test_unknown_account_id(self, two_accounts):
        missing = uuid.uuid4()

        result = invoke("accounts", "set-number", str(missing), "--sms", "+5215500001111")

        assert result.exit_code == 1
        assert result.stderr == f"Error: no account with id {missing}\n"

    def test_a_number_a_setting_gives_the_default_account_stays(
        self, two_accounts, database: Database, monkeypatch
    ):
        sol, _ = two_accounts
        monkeypatch.setenv("TWILIO_PHONE_NUMBER", SOL_SMS)

        result = invoke("accounts", "set-number", "Panadería Sol", "--sms", "+5215500001111")

        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: cannot change the sms number: {SOL_SMS} is TWILIO_PHONE_NUMBER, which gives"
            " it to the default account at every start; change or unset TWILIO_PHONE_NUMBER"
            " (and restart) first\n"
        )
        assert numbers_of(database, sol)["sms"] == SOL_SMS


class TestCreate:
    def test_a_number_another_account_has_is_refused_naming_it(
        self, two_accounts, database: Database
    ):
        _, luna = two_accounts

        result = invoke("accounts", "create", "Panadería Nube", "--sms-number", LUNA_SMS)

        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: sms number {LUNA_SMS} already belongs to account 'Tortillería Luna' ({luna})\n"
        )
        assert database.count("accounts") == 2


class TestRename:
    def test_by_name(self, two_accounts, database: Database):
        sol, _ = two_accounts

        result = invoke("accounts", "rename", "Panadería Sol", "  Panadería Sol y Luna ")

        assert result.exit_code == 0, result.output
        assert result.stdout == (
            f"Account {sol} renamed from 'Panadería Sol' to 'Panadería Sol y Luna'.\n"
        )
        assert (
            database.scalar("SELECT name FROM accounts WHERE name LIKE 'Panader%'")
            == "Panadería Sol y Luna"
        )

    def test_name_of_another_account_is_refused(self, two_accounts, database: Database):
        _, luna = two_accounts

        result = invoke("accounts", "rename", str(luna), "Panadería Sol")

        assert result.exit_code == 1
        assert "is already named 'Panadería Sol'" in result.stderr
        assert database.scalar("SELECT count(*) FROM accounts WHERE name = 'Tortillería Luna'") == 1

    @pytest.mark.parametrize("name", ["", "   ", "x" * 201])
    def test_bad_name(self, two_accounts, name):
        result = invoke("accounts", "rename", "Panadería Sol", name)

        assert result.exit_code == 1
        assert result.stderr == "Error: an account's name must be 1 to 200 characters\n"

    def test_a_shared_name_asks_for_the_id(self, use_database: str):
        async def twins(session: AsyncSession) -> list[uuid.UUID]:
            return [(await add_account(session, "Café")).id for _ in range(2)]

        ids = in_session(use_database, twins)

        result = invoke("accounts", "rename", "Café", "Café Centro")

        assert result.exit_code == 1
        assert result.stderr.startswith("Error: 2 accounts are named 'Café'; give the id: ")
        assert all(str(account_id) in result.stderr for account_id in ids)


class TestDelete:
    def test_deletes_every_row_of_the_account_and_nothing_else(
        self, two_accounts, database: Database
    ):
        sol, luna = two_accounts
        before = rows_of(database, luna)
        assert all(before.values()), before  # the seed reaches every table
        assert all(rows_of(database, sol).values())

        result = invoke("accounts", "delete", "Panadería Sol", "--yes")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[-1] == (
            f"Account 'Panadería Sol' ({sol}) deleted with 1 conversation, 2 messages, 1 contact,"
            " 1 media item, 1 API key, 1 template, 1 broadcast, 1 webhook log entry."
        )
        assert set(rows_of(database, sol).values()) == {0}
        assert database.scalar("SELECT count(*) FROM accounts WHERE name = 'Panadería Sol'") == 0
        assert rows_of(database, luna) == before

    def test_asks_first_and_shows_what_will_go(self, two_accounts, database: Database):
        sol, _ = two_accounts

        result = typing("y\n", "accounts", "delete", str(sol))

        assert result.exit_code == 0, result.output
        first = result.stdout.splitlines()[0]
        assert first == (
            f"Account 'Panadería Sol' ({sol}; SMS {SOL_SMS}, WhatsApp {SOL_WHATSAPP}) holds"
            " 1 conversation, 2 messages, 1 contact, 1 media item, 1 API key, 1 template,"
            " 1 broadcast, 1 webhook log entry."
        )
        assert "Delete it and all its data, for good? [y/N]" in result.stdout
        assert set(rows_of(database, sol).values()) == {0}

    @pytest.mark.parametrize("answer", ["n\n", "\n", ""])
    def test_not_confirmed_deletes_nothing(self, two_accounts, database: Database, answer):
        sol, _ = two_accounts
        before = rows_of(database, sol)

        result = typing(answer, "accounts", "delete", "Panadería Sol")

        assert result.exit_code == 1
        assert result.stderr.endswith(
            "Error: not confirmed: nothing deleted (--yes deletes without asking)\n"
        )
        assert rows_of(database, sol) == before

    def test_unknown_account(self, two_accounts):
        result = invoke("accounts", "delete", "Panadería Nube", "--yes")

        assert result.exit_code == 1
        assert result.stderr == "Error: no account with id or name 'Panadería Nube'\n"

    def test_the_default_accounts_numbers_keep_it(
        self, two_accounts, database: Database, monkeypatch
    ):
        sol, _ = two_accounts
        monkeypatch.setenv("TWILIO_WHATSAPP_NUMBER", SOL_WHATSAPP)
        before = rows_of(database, sol)

        result = invoke("accounts", "delete", "Panadería Sol", "--yes")

        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: cannot delete account 'Panadería Sol': {SOL_WHATSAPP} is"
            " TWILIO_WHATSAPP_NUMBER, which gives it to the default account at every start;"
            " change or unset TWILIO_WHATSAPP_NUMBER (and restart) first\n"
        )
        assert rows_of(database, sol) == before

    def test_the_demo_numbers_keep_the_demo_account(self, use_database: str, database: Database):
        async def demo(session: AsyncSession) -> None:
            await add_account(session, "default", numbers={Channel.sms: "+15005550006"})

        in_session(use_database, demo)

        result = invoke("accounts", "delete", "default", "--yes")

        assert result.exit_code == 1
        assert "the demo sms number the default account gets at every start" in result.stderr
        assert "set TWILIO_PHONE_NUMBER to the number you want instead" in result.stderr
        assert database.count("accounts") == 1


class TestKeysAndRetentionByName:
    def test_by_name_and_by_id(self, two_accounts):
        sol, _ = two_accounts

        by_name = invoke("accounts", "keys", "list", "Panadería Sol")
        by_id = invoke("accounts", "keys", "list", str(sol))

        assert by_name.exit_code == 0, by_name.output
        assert by_name.stdout == by_id.stdout
        header, row = by_name.stdout.splitlines()
        assert header.startswith("PREFIX")
        assert row.startswith("plk_")

    def test_create_by_name(self, two_accounts, database: Database):
        _, luna = two_accounts

        result = invoke("accounts", "keys", "create", "Tortillería Luna", "--name", "caja")

        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0].endswith(f"('caja') created for account {luna}.")
        assert rows_of(database, luna)["api_keys"] == 2

    def test_retention_by_name(self, two_accounts, database: Database):
        _, luna = two_accounts

        result = invoke("accounts", "retention", "Tortillería Luna", "90")

        assert result.exit_code == 0, result.output
        assert result.stdout == f"Account {luna}: messages are kept 90 days.\n"
        assert (
            database.scalar("SELECT retention_days FROM accounts WHERE name = 'Tortillería Luna'")
            == 90
        )

    def test_unknown_account(self, two_accounts):
        result = invoke("accounts", "keys", "list", "Panadería Nube")

        assert result.exit_code == 1
        assert result.stderr == "Error: no account with id or name 'Panadería Nube'\n"
