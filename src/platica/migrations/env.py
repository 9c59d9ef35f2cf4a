"""Alembic environment: runs the migrations with a blocking driver (SQLite or PostgreSQL)."""

from alembic import context
from sqlalchemy import create_engine, pool

from platica import models  # noqa: F401  (registers the tables)
from platica.db import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
