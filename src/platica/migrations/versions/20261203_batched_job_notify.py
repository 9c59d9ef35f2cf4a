"""Reply jobs queued by the webhook wake the workers once per batch, not once per message

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Procrastinate's trigger on `procrastinate_jobs` sends a NOTIFY for every job inserted. A
transaction that notifies takes one lock, for the whole database, and holds it while its commit
is flushed to disk, so at hundreds of webhooks a second the commits of the webhook's statement
(which inserts the reply job) queue behind each other instead of sharing a disk flush. Plática's
own connections set `platica.job_notify = 'batched'` (db.py); for the jobs they insert, the
trigger stays quiet, and the process that inserted them sends one notification for all the jobs
queued since its last one (jobs/runner.py). Jobs deferred through Procrastinate itself still
notify as before. PostgreSQL only.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Procrastinate 3.x's function (procrastinate/sql/schema.sql), with one condition in front.
FUNCTION = """
CREATE OR REPLACE FUNCTION procrastinate_notify_queue_job_inserted_v1()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    payload TEXT;
BEGIN
    {guard}
    SELECT json_build_object('type', 'job_inserted', 'job_id', NEW.id)::text INTO payload;
    PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
    RETURN NEW;
END;
$$;
"""
GUARD = (
    "IF current_setting('platica.job_notify', true) = 'batched' THEN\n"
    "        RETURN NEW;\n"
    "    END IF;"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION.format(guard=GUARD))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION.format(guard=""))
