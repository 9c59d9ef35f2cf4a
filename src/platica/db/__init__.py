"""The database floor: every other module reaches the database through here.

- `engine`: engines and pools for SQLite and PostgreSQL (and the psycopg pool of the hot path).
- `tx`: the one transaction primitive (`transaction`, durable or not; `session` for the ORM;
  `execute_alone` for a statement that is a transaction by itself, in autocommit on PostgreSQL)
  and typed rows (`Typed`, `fetch_one`, `fetch_all`).
- `sql`: the declarative base and statement helpers (`any_of`, `insert_ignore`, `constant`).
- `migrate`: Alembic.
"""

from platica.db.engine import (
    APPLICATION_NAME,
    DriverPool,
    async_url,
    connections_at_most,
    conninfo,
    create_engine,
    create_sessionmaker,
    open_driver_pool,
    pool_size_within,
    sync_url,
)
from platica.db.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
    upgrade_async,
)
from platica.db.sql import (
    Base,
    any_of,
    constant,
    dialect_insert,
    insert_ignore,
    none_of,
    one_of,
)
from platica.db.tx import (
    Database,
    Rows,
    Tx,
    Typed,
    execute_alone,
    fetch_all,
    fetch_one,
    session,
    take_turns,
    transaction,
)

__all__ = [
    "APPLICATION_NAME",
    "Base",
    "Database",
    "DriverPool",
    "Rows",
    "Tx",
    "Typed",
    "alembic_config",
    "any_of",
    "async_url",
    "connections_at_most",
    "conninfo",
    "constant",
    "create_engine",
    "create_sessionmaker",
    "current_revision",
    "dialect_insert",
    "execute_alone",
    "fetch_all",
    "fetch_one",
    "head_revision",
    "insert_ignore",
    "none_of",
    "one_of",
    "open_driver_pool",
    "pool_size_within",
    "session",
    "sync_url",
    "take_turns",
    "transaction",
    "upgrade",
    "upgrade_async",
]
