"""The reply queue on the conversation row; Procrastinate's tables dropped

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

On PostgreSQL, a conversation's reply task was a Procrastinate job: a row inserted with every
inbound message, then fetched, finished and deleted, each step with triggers of its own (an
event row, and a NOTIFY per job that made concurrent commits queue behind one another). It is
now `conversations.reply_due_at`: the webhook's statement sets it, and a worker claims due
conversations with FOR UPDATE SKIP LOCKED, taking their leases in the same UPDATE
(jobs/runner.py). Conversations with work left are made due at once, and Procrastinate's
tables, types and functions are dropped. SQLite gets the column and index too (one schema) and
keeps its in-process runner.
"""

from collections.abc import Sequence
from importlib.resources import files

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = sa.text("reply_due_at IS NOT NULL")

DROP_PROCRASTINATE = """
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


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reply_due_at", sa.DateTime(timezone=True)))
        batch_op.create_index(
            "ix_conversations_reply_due",
            ["reply_due_at"],
            unique=False,
            sqlite_where=DUE,
            postgresql_where=DUE,
        )
    if op.get_bind().dialect.name != "postgresql":
        return
    # Whatever the dropped jobs were waiting to do is still in the messages: make it due.
    op.execute(
        """
        UPDATE conversations SET reply_due_at = now()
        WHERE id IN (
            SELECT conversation_id FROM messages
            WHERE reply_state = 'pending'
               OR (direction = 'outbound' AND status IN ('pending', 'sending'))
        )
        """
    )
    op.execute(DROP_PROCRASTINATE)


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_reply_due")
        batch_op.drop_column("reply_due_at")
    if op.get_bind().dialect.name != "postgresql":
        return
    # The code of revision 0005 queues replies with Procrastinate: give it its tables back
    # when Procrastinate is installed (a pending message is found again by its sweeper).
    try:
        schema = files("procrastinate.sql").joinpath("schema.sql").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        return
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    driver.execute(schema)
