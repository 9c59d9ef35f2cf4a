"""docs/supabase.md's SQL, run on PostgreSQL dressed as a Supabase project (its `auth` schema and
`auth.uid()`, the Data API's roles granted the public tables): a user linked with `platica
accounts link-user` sees their account only, `anon` nothing; the guide's `revoke` takes the
tables out of the Data API; its SQL-editor examples run."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from platica import db
from tests.test_cli import invoke
from tests.test_rls import dsn, seed
from tests.throwaway import throwaway_database

pytestmark = pytest.mark.postgres

GUIDE = Path(__file__).parent.parent / "docs" / "supabase.md"
USER = uuid.UUID("0b8c7f2e-5d1a-4c3b-9e6f-2a1d4b7c8e90")
# Supabase's auth.uid(): the `sub` of the request's JWT, as PostgREST sets it.
SUPABASE_AUTH = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
"""


def guide_sql(starting: str) -> str:
    """The guide's ```sql block whose text starts with `starting`."""
    blocks: list[str] = re.findall(r"```sql\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    [block] = [block for block in blocks if block.startswith(starting)]
    return block


@pytest.fixture
def roles(postgres_url: str) -> Iterator[dict[str, str]]:
    """The Data API's roles, under names of this test's own (roles are cluster-wide)."""
    suffix = uuid.uuid4().hex[:8]
    names = {"anon": f"anon_{suffix}", "authenticated": f"authenticated_{suffix}"}
    with psycopg.connect(dsn(postgres_url), autocommit=True) as connection:
        for name in names.values():
            connection.execute(f"CREATE ROLE {name} NOLOGIN NOBYPASSRLS")
    try:
        yield names
    finally:
        with psycopg.connect(dsn(postgres_url), autocommit=True) as connection:
            for name in names.values():
                connection.execute(f"DROP ROLE IF EXISTS {name}")


def as_roles(sql: str, roles: dict[str, str]) -> str:
    """`sql` with Supabase's role names replaced by the test's."""
    return re.sub(r"\b(anon|authenticated)\b", lambda m: roles[m.group(1)], sql)


def count_as(url: str, role: str, table: str, sub: uuid.UUID | None = None) -> int | str:
    """How many rows of `table` `role` sees (as PostgREST would run it), or the error."""
    with psycopg.connect(dsn(url), autocommit=True, row_factory=dict_row) as connection:
        if sub is not None:
            connection.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (str(sub),))
        connection.execute(f"SET ROLE {role}")
        try:
            row = connection.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return "permission denied"
        assert row is not None
        return int(row["n"])


class TestGuideSql:
    def test_on_a_supabase_like_database(
        self, postgres_url: str, roles: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with throwaway_database(postgres_url) as url:
            with psycopg.connect(dsn(url), autocommit=True) as connection:
                connection.execute(SUPABASE_AUTH)
                connection.execute(
                    "INSERT INTO auth.users VALUES (%s, 'maria@panaderiasol.es')", (USER,)
                )
            db.upgrade(url)
            with psycopg.connect(dsn(url), autocommit=True) as connection:
                # What a Supabase project grants the Data API's roles on public tables.
                for role in roles.values():
                    connection.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
                    connection.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
                    connection.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}")
            data = seed(url)
            monkeypatch.setenv("DATABASE_URL", url)

            with psycopg.connect(dsn(url), autocommit=True, row_factory=dict_row) as connection:
                found = connection.execute(guide_sql("select id, email from auth.users")).fetchone()
            assert found is not None
            assert found["id"] == USER
            linked = invoke("accounts", "link-user", str(data.b), str(found["id"]))
            assert linked.exit_code == 0, linked.output

            anon, user = roles["anon"], roles["authenticated"]
            with psycopg.connect(dsn(url), autocommit=True, row_factory=dict_row) as connection:
                mine = connection.execute(
                    "SELECT count(*) AS n FROM conversations WHERE account_id = %s", (data.b,)
                ).fetchone()
                everyone = connection.execute("SELECT count(*) AS n FROM conversations").fetchone()
            assert mine is not None
            assert everyone is not None
            assert 0 < mine["n"] < everyone["n"]
            assert count_as(url, user, "conversations", USER) == mine["n"]
            assert count_as(url, user, "conversations", uuid.uuid4()) == 0
            assert count_as(url, anon, "conversations") == 0
            assert count_as(url, anon, "alembic_version") == 1  # no policy: what the guide says

            with psycopg.connect(dsn(url), autocommit=True) as connection:
                connection.execute(as_roles(guide_sql("revoke all on"), roles))
                # Several statements, no parameters: psycopg sends them as one simple query.
                connection.execute(guide_sql("select get_whatsapp_stats();"))

            for table in ("conversations", "messages", "api_keys", "alembic_version"):
                assert count_as(url, user, table, USER) == "permission denied", table
                assert count_as(url, anon, table) == "permission denied", table
