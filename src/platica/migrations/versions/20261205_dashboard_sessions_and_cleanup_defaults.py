"""Dashboard sessions kept on the server; the cleanup SQL functions' p_days defaults to 30

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

- `dashboard_sessions`: one row per dashboard login, keyed by the SHA-256 hash of the random
  session id its cookie carries. Logging out deletes the row, so a copied cookie stops working
  at once instead of up to 12 hours later. On PostgreSQL it gets row-level security like every
  other table (revision 0003's policy: an account sees its own sessions; Plática's own
  connections see every one).
- PostgreSQL only: `cleanup_old_whatsapp_conversations()` and `cleanup_old_sms_conversations()`
  called with no argument, as the original seeds call them, answered "function does not
  exist": `p_days` now defaults to 30, the seeds' default (and `platica cleanup`'s).
  CREATE OR REPLACE keeps the grants made on them; the downgrade recreates them without the
  default (grants made since on these two functions are then to be made again).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import platica.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "platica_account_rows"  # revision 0003's name, on every table
# Revision 0003's policy, for a table whose account column is account_id.
VISIBLE = (
    "((SELECT platica_current_account()) IS NOT NULL"
    " AND account_id = (SELECT platica_current_account()))"
    " OR ((SELECT platica_current_account()) IS NULL AND (SELECT platica_is_service()))"
)

CLEANUP = """
CREATE OR REPLACE FUNCTION cleanup_old_{channel}_conversations(
    p_days integer{default}, p_account_id uuid DEFAULT NULL
)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY INVOKER
AS $$ SELECT platica_cleanup_conversations('{channel}', p_days, p_account_id) $$;
"""


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", platica.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", platica.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_dashboard_sessions_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_dashboard_sessions")),
    )
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dashboard_sessions_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dashboard_sessions_expires_at"), ["expires_at"], unique=False
        )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE dashboard_sessions ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY {POLICY} ON dashboard_sessions USING ({VISIBLE}) WITH CHECK ({VISIBLE})"
    )
    for channel in ("whatsapp", "sms"):
        op.execute(CLEANUP.format(channel=channel, default=" DEFAULT 30"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for channel in ("whatsapp", "sms"):
            # A parameter's default cannot be removed by CREATE OR REPLACE.
            op.execute(f"DROP FUNCTION cleanup_old_{channel}_conversations(integer, uuid)")
            op.execute(CLEANUP.format(channel=channel, default=""))
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON dashboard_sessions")
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_dashboard_sessions_account_id"))
    op.drop_table("dashboard_sessions")
