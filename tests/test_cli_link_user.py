"""`platica accounts link-user ACCOUNT USER_ID`: a Supabase user acts as an account."""

from __future__ import annotations

import uuid

from tests.conftest import Database, sqlite_only
from tests.test_cli import invoke, printed

USER = uuid.UUID("0b8c7f2e-5d1a-4c3b-9e6f-2a1d4b7c8e90")


def create(name: str, number: str) -> str:
    result = invoke("accounts", "create", name, "--sms-number", number)
    assert result.exit_code == 0, result.output
    return printed(result, "Account")


def linked(database: Database) -> dict[str, str | None]:
    rows = database.rows("SELECT name, auth_user_id FROM accounts")
    return {
        row.name: None if row.auth_user_id is None else str(uuid.UUID(str(row.auth_user_id)))
        for row in rows
    }


class TestLinkUser:
    def test_by_id(self, use_database: str, database: Database) -> None:
        account = create("Panadería Sol", "+34911222334")

        result = invoke("accounts", "link-user", account, str(USER))

        assert result.exit_code == 0, result.output
        assert f"Supabase user {USER} linked to account {account}" in result.stdout
        assert linked(database) == {"Panadería Sol": str(USER)}

    @sqlite_only
    def test_by_name_and_again(self, use_database: str, database: Database) -> None:
        account = create("Panadería Sol", "+34911222334")
        assert invoke("accounts", "link-user", "Panadería Sol", str(USER)).exit_code == 0

        again = invoke("accounts", "link-user", account, str(USER).upper())

        assert again.exit_code == 0, again.output
        assert "already linked" in again.stdout
        assert linked(database) == {"Panadería Sol": str(USER)}

    @sqlite_only
    def test_not_a_uuid(self, use_database: str, database: Database) -> None:
        account = create("Panadería Sol", "+34911222334")

        result = invoke("accounts", "link-user", account, "maria@example.com")

        assert result.exit_code == 2
        assert "USER_ID" in result.stderr
        assert "must be a Supabase user id (a UUID" in result.stderr
        assert linked(database) == {"Panadería Sol": None}

    @sqlite_only
    def test_unknown_account(self, use_database: str) -> None:
        create("Panadería Sol", "+34911222334")

        for given in (str(uuid.uuid4()), "Panadería Luna"):
            result = invoke("accounts", "link-user", given, str(USER))
            assert result.exit_code == 1
            assert result.stderr.startswith("Error: no account with id")

    @sqlite_only
    def test_ambiguous_name(self, use_database: str) -> None:
        create("Sol", "+34911222334")
        create("Sol", "+34911222335")

        result = invoke("accounts", "link-user", "Sol", str(USER))

        assert result.exit_code == 1
        assert "2 accounts are named 'Sol'" in result.stderr

    def test_user_of_another_account_moves_only_with_force(
        self, use_database: str, database: Database
    ) -> None:
        sol = create("Sol", "+34911222334")
        luna = create("Luna", "+34911222335")
        assert invoke("accounts", "link-user", sol, str(USER)).exit_code == 0

        refused = invoke("accounts", "link-user", luna, str(USER))
        assert refused.exit_code == 1
        assert f"already linked to account {sol} (Sol); add --force" in refused.stderr
        assert linked(database) == {"Sol": str(USER), "Luna": None}

        moved = invoke("accounts", "link-user", luna, str(USER), "--force")
        assert moved.exit_code == 0, moved.output
        assert f"unlinked from account {sol}" in moved.stdout
        assert linked(database) == {"Sol": None, "Luna": str(USER)}

    @sqlite_only
    def test_account_with_another_user_is_replaced_only_with_force(
        self, use_database: str, database: Database
    ) -> None:
        sol = create("Sol", "+34911222334")
        first = uuid.uuid4()
        assert invoke("accounts", "link-user", sol, str(first)).exit_code == 0

        refused = invoke("accounts", "link-user", sol, str(USER))
        assert refused.exit_code == 1
        assert f"already linked to Supabase user {first}; add --force" in refused.stderr

        replaced = invoke("accounts", "link-user", sol, str(USER), "--force")
        assert replaced.exit_code == 0, replaced.output
        assert f"Supabase user {first} unlinked" in replaced.stdout
        assert linked(database) == {"Sol": str(USER)}
