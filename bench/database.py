"""Throwaway PostgreSQL databases, the INSERT+COMMIT probe, history seeding and the checks.

Every scenario gets its own database, copied (CREATE DATABASE … TEMPLATE) from one that
`python -m platica db upgrade` migrated at the start of the run, and dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Json
from sqlalchemy.engine import make_url

from bench import procs
from bench.checks import Ledger

MIGRATE_TIMEOUT = 120.0


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def conninfo(url: str) -> str:
    """A libpq URL (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresServer:
    """The PostgreSQL server the benchmark borrows databases from (BENCH_DATABASE_URL)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = conninfo(admin_url)
        self.prefix = f"platica_bench_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.template: str | None = None

    def available(self) -> str | None:
        """None when the server answers, else why not."""
        try:
            with psycopg.connect(self.admin_url, connect_timeout=3) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error as error:
            return str(error).strip().splitlines()[0]
        return None

    def version(self) -> str:
        with psycopg.connect(self.admin_url) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"

    def settings(self) -> dict[str, str]:
        names = ["synchronous_commit", "fsync", "shared_buffers", "max_connections"]
        found = {}
        with psycopg.connect(self.admin_url) as connection:
            for name in names:
                row = connection.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                found[name] = str(row[0]) if row else "?"
        return found

    def _admin(self, statement: sql.Composed | sql.SQL) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(statement)

    def create(self, suffix: str, *, template: str | None = None) -> str:
        """A new empty (or template-copied) database; its URL."""
        name = f"{self.prefix}_{suffix}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self._admin(statement)
        self.created.append(name)
        return with_database(self.admin_url, name)

    def create_migrated_template(self, env: dict[str, str], log_path: Path) -> float:
        """Migrate one database with `python -m platica db upgrade`; seconds it took."""
        url = self.create("template")
        self.template = f"{self.prefix}_template"
        started = time.monotonic()
        with log_path.open("ab") as log:
            subprocess.run(
                [sys.executable, "-m", "platica", "db", "upgrade"],
                env={**env, "DATABASE_URL": url},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT,
                check=True,
            )
        return time.monotonic() - started

    def create_migrated(self, suffix: str) -> str:
        assert self.template is not None, "create_migrated_template() first"
        return self.create(suffix, template=self.template)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None
        assert name.startswith(self.prefix)
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        # The template last: the others were copied from it.
        for name in sorted(self.created, key=lambda n: n.endswith("_template")):
            try:
                self._admin(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            except psycopg.Error as error:
                sys.stderr.write(f"bench: could not drop {name}: {error}\n")
        self.created.clear()


# -- the INSERT+COMMIT probe -------------------------------------------------------------------


@dataclass
class InsertProbe:
    connections: int
    rows: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


PROBE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_probe (
    id bigserial PRIMARY KEY,
    sender text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


async def insert_probe(url: str, connections: int, seconds: float) -> InsertProbe:
    """Durable single-row INSERT + COMMIT, back to back on `connections` connections."""
    with psycopg.connect(conninfo(url), autocommit=True) as setup:
        setup.execute(PROBE_TABLE)
        setup.execute("SET synchronous_commit = on")
    rows = 0
    started = time.monotonic()
    stop_at = started + seconds

    async def one() -> None:
        nonlocal rows
        async with await psycopg.AsyncConnection.connect(conninfo(url)) as connection:
            await connection.execute("SET synchronous_commit = on")
            await connection.commit()
            while time.monotonic() < stop_at:
                await connection.execute(
                    "INSERT INTO bench_probe (sender, body) VALUES (%s, %s)",
                    ("+12025550100", "Hola"),
                )
                await connection.commit()
                rows += 1

    await asyncio.gather(*(one() for _ in range(connections)))
    return InsertProbe(connections, rows, time.monotonic() - started)


# -- Plática's database ------------------------------------------------------------------------


SEED_SQL = """
WITH account AS (
    SELECT account_id FROM channel_configs WHERE channel = 'sms' ORDER BY id LIMIT 1
)
INSERT INTO contacts (account_id, channel, address, opted_out, last_inbound_at, created_at)
SELECT account.account_id, 'sms', '+1999' || lpad(g::text, 7, '0'), false,
       now() - interval '1 day', now() - interval '30 days'
FROM account, generate_series(1, %(conversations)s) AS g;

INSERT INTO conversations (account_id, channel, contact_id, contact_address, status, ai_enabled,
                           created_at, last_message_at)
SELECT account_id, channel, id, address, 'active', true, created_at, now() - interval '1 day'
FROM contacts WHERE address LIKE '+1999%%';

INSERT INTO messages (account_id, conversation_id, channel, direction, author, body,
                      twilio_sid, status, part, reply_state, attempts, created_at, updated_at)
SELECT c.account_id, c.id, 'sms', 'inbound', 'contact',
       'seeded message ' || k || ' of conversation ' || c.id,
       'SM' || md5(c.id::text || ':' || k::text), 'received', 0, 'answered', 0,
       c.created_at + k * interval '2 minutes', c.created_at + k * interval '2 minutes'
FROM conversations c, generate_series(0, %(inbound_per_conversation)s - 1) AS k
WHERE c.contact_address LIKE '+1999%%';

-- One reply to each seeded message, as the worker would have stored and sent it.
INSERT INTO messages (account_id, conversation_id, channel, direction, author, body,
                      twilio_sid, status, reply_to_id, part, attempts, model, created_at,
                      updated_at)
SELECT i.account_id, i.conversation_id, 'sms', 'outbound', 'ai', 'seeded reply to ' || i.id,
       'SM' || md5('reply:' || i.id::text), 'delivered', i.id, 0, 1, 'gpt-4o-mini',
       i.created_at + interval '2 seconds', i.created_at + interval '5 seconds'
FROM messages i WHERE i.direction = 'inbound' AND i.body LIKE 'seeded message %%';

INSERT INTO webhook_logs (received_at, endpoint, account_id, message_sid, status_code, outcome,
                          signature_valid, params)
SELECT m.created_at, 'sms', m.account_id, m.twilio_sid, 200, 'accepted', true,
       jsonb_build_object('MessageSid', jsonb_build_array(m.twilio_sid),
                          'Body', jsonb_build_array(m.body))
FROM messages m WHERE m.direction = 'inbound' AND m.body LIKE 'seeded message %%';
"""


def seed_history(url: str, messages: int, per_conversation: int = 10) -> float:
    """Store `messages` old, answered messages (half inbound, half replies) plus their webhook
    logs, in conversations of `per_conversation`; seconds it took (ANALYZE included)."""
    started = time.monotonic()
    conversations = max(1, messages // per_conversation)
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        params = {
            "conversations": conversations,
            "inbound_per_conversation": max(1, per_conversation // 2),
        }
        with connection.transaction():
            # Consistent by construction: skip the per-row foreign-key triggers (superuser).
            with contextlib.suppress(psycopg.Error), connection.transaction():
                connection.execute("SET LOCAL session_replication_role = replica")
            for statement in SEED_SQL.split(";\n"):
                if statement.strip():
                    connection.execute(statement, params)
        connection.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def count_rows(url: str) -> dict[str, int]:
    counts = {}
    with psycopg.connect(conninfo(url)) as connection:
        for table in ("messages", "conversations", "contacts", "webhook_logs"):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = connection.execute(query).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


def _rows(
    url: str | None, sqlite_path: Path | None, query: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Every row of one query, on PostgreSQL (`url`) or on the SQLite file (read-only)."""
    if sqlite_path is not None:
        import sqlite3

        connection = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            return list(connection.execute(query.replace("%s", "?"), tuple(params)))
        finally:
            connection.close()
    assert url is not None
    with psycopg.connect(conninfo(url)) as pg:
        return [tuple(row) for row in pg.execute(query, tuple(params))]


def last_message_id(url: str | None, sqlite_path: Path | None = None) -> int:
    """The highest message id so far (0 for none): the ledger after it leaves seeded history out."""
    rows = _rows(url, sqlite_path, "SELECT max(id) FROM messages")
    return int(rows[0][0] or 0) if rows else 0


def reply_ledger(url: str | None, sqlite_path: Path | None = None, after_id: int = 0) -> Ledger:
    """The inbound messages and the replies stored after message `after_id` (checks.Ledger)."""
    inbound = _rows(
        url,
        sqlite_path,
        "SELECT id, conversation_id, twilio_sid, reply_state, note FROM messages "
        "WHERE direction = 'inbound' AND id > %s",
        (after_id,),
    )
    outbound = _rows(
        url,
        sqlite_path,
        "SELECT id, conversation_id, reply_to_id, part, twilio_sid, author FROM messages "
        "WHERE direction = 'outbound' AND id > %s",
        (after_id,),
    )
    return Ledger.build(inbound, outbound)


# Work left: inbound messages waiting for their reply (the partial index ix_messages_reply_pending
# makes this cheap), then, once there are none, replies stored but not yet sent (a scan, so only
# then).
PENDING_SQL = "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
UNSENT_SQL = "SELECT count(*) FROM messages WHERE direction = 'outbound' AND status IN ('pending', 'sending')"


def unsettled_sqlite(sqlite_path: Path) -> int:
    """Messages still waiting for their reply, or replies not yet sent, in the SQLite file."""
    pending = int(_rows(None, sqlite_path, PENDING_SQL)[0][0])
    return pending or int(_rows(None, sqlite_path, UNSENT_SQL)[0][0])


def account_settings(url: str | None, sqlite_path: Path | None = None) -> dict[str, Any]:
    """How many accounts there are, and the settings that matter here of its SMS channels and
    of its WhatsApp ones (the voice notes')."""
    accounts = _rows(url, sqlite_path, "SELECT count(*) FROM accounts")[0][0]
    rows = _rows(
        url,
        sqlite_path,
        "SELECT channel, phone_number, debounce_seconds, ai_enabled, daily_token_budget FROM "
        "channel_configs ORDER BY id",
    )

    def channels(kind: str) -> list[dict[str, Any]]:
        return [
            {
                "phone_number": number,
                "debounce_seconds": float(debounce),
                "ai_enabled": bool(ai),
                "daily_token_budget": budget,
            }
            for channel, number, debounce, ai, budget in rows
            if channel == kind
        ]

    return {
        "accounts": int(accounts),
        "sms_channels": channels("sms"),
        "whatsapp_channels": channels("whatsapp"),
    }


def media_states(url: str | None, sqlite_path: Path | None = None) -> dict[str, int]:
    """How many media items are in each state (pending, fetched, understood, failed)."""
    rows = _rows(url, sqlite_path, "SELECT state, count(*) FROM media GROUP BY state")
    return {str(state): int(count) for state, count in rows}


def postgres_server_pid(url: str) -> int | None:
    """The PostgreSQL server's postmaster pid: the parent of this connection's backend (None
    when the server does not run on this machine, see procs.postgres_server_pid)."""
    with psycopg.connect(conninfo(url)) as connection:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        # Read /proc while the backend still exists.
        return procs.postgres_server_pid(int(row[0])) if row else None


SESSIONS_SQL = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"


class PostgresWatch:
    """The whole PostgreSQL server's CPU and the sessions opened on one database, for
    procs.Sampler: `watch = await PostgresWatch.open(url, postmaster)`, then `aclose()`.

    One connection, opened before the first phase and kept: its own session is counted once,
    before any phase starts, so the per-phase difference of `sessions` (PostgreSQL 14+) is
    Plática's new connections alone. A backend reports its session when it first goes idle,
    i.e. as soon as the connection is usable."""

    def __init__(self, postmaster: int | None, connection: psycopg.AsyncConnection[Any]) -> None:
        self.postmaster = postmaster
        self._connection = connection

    @classmethod
    async def open(cls, url: str, postmaster: int | None) -> PostgresWatch:
        connection = await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True)
        watch = cls(postmaster, connection)
        await watch.sessions()
        return watch

    def cpu_seconds(self) -> float | None:
        return None if self.postmaster is None else procs.server_cpu_seconds(self.postmaster)

    async def sessions(self) -> int | None:
        # Autocommit: each read is its own transaction, so a fresh statistics snapshot.
        row = await (await self._connection.execute(SESSIONS_SQL)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def unsettled(self) -> int:
        """Messages still waiting for their reply, or replies not yet sent (see PENDING_SQL);
        on the watch's own connection, so polling opens no sessions."""
        for query in (PENDING_SQL, UNSENT_SQL):
            row = await (await self._connection.execute(query)).fetchone()
            if row is not None and row[0]:
                return int(row[0])
        return 0

    async def aclose(self) -> None:
        await self._connection.close()


def prepare_broadcast(
    url: str, mps: float, template: dict[str, Any], opted_out: Sequence[str]
) -> str:
    """The one account's WhatsApp pace set to `mps`, `template` (sid, name, body, variables:
    their sample values) added as an
    approved template, and `opted_out` stored as contacts who wrote STOP; the account's id."""
    with psycopg.connect(conninfo(url)) as pg:
        account_id = str(pg.execute("SELECT id FROM accounts").fetchone()[0])  # type: ignore[index]
        pg.execute(
            "UPDATE channel_configs SET broadcast_mps = %s WHERE channel = 'whatsapp'", (mps,)
        )
        pg.execute(
            "INSERT INTO templates (account_id, sid, name, language, body, variables, approval,"
            " source, created_at, updated_at)"
            " VALUES (%s, %s, %s, 'es', %s, %s, 'approved', 'manual', now(), now())",
            (
                account_id,
                template["sid"],
                template["name"],
                template["body"],
                Json(template["variables"]),
            ),
        )
        with pg.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO contacts (account_id, channel, address, opted_out, opted_out_at,"
                " rate_window_count, created_at) VALUES (%s, 'whatsapp', %s, true, now(), 0, now())",
                [(account_id, number) for number in opted_out],
            )
    return account_id


def broadcast_unfinished(url: str, broadcast_id: int) -> int:
    """Recipients of the broadcast not yet handed over, plus messages not yet sent (0: done)."""
    rows = _rows(
        url,
        None,
        "SELECT (SELECT count(*) FROM broadcast_recipients WHERE broadcast_id = %s"
        " AND state = 'queued') + (SELECT count(*) FROM messages WHERE direction = 'outbound'"
        " AND status IN ('pending', 'sending'))",
        (broadcast_id,),
    )
    return int(rows[0][0])
