"""The job queue's tables on PostgreSQL (Procrastinate's schema for the pinned version)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

SQLite runs jobs in-process and needs nothing. Superseded by revision 0006, which queues
replies on the conversation row and drops these tables: Plática no longer depends on
Procrastinate, so on a new database this creates nothing unless Procrastinate happens to be
installed (and 0006 then drops it again).
"""

from collections.abc import Sequence
from importlib.resources import files

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    try:
        schema = files("procrastinate.sql").joinpath("schema.sql").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return
    # Straight to psycopg without parameters, so the "%" in its SQL is not a placeholder.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    driver.execute(schema)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        DROP TABLE IF EXISTS procrastinate_periodic_defers, procrastinate_events,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type,
            procrastinate_job_to_defer_v1 CASCADE;
        DO $$
        DECLARE routine regprocedure;
        BEGIN
            FOR routine IN SELECT oid::regprocedure FROM pg_proc WHERE proname LIKE 'procrastinate%' LOOP
                EXECUTE 'DROP ROUTINE IF EXISTS ' || routine || ' CASCADE';
            END LOOP;
        END $$;
        """
    )
