"""Retention: accounts.retention_days, and an index on messages.reply_to_id

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

`accounts.retention_days` (NULL: keep every message) is read by `platica cleanup` and the daily
cleanup (conversations/retention.py).

The index makes deleting old messages affordable: each deleted message sets the `reply_to_id`
of the replies that point at it to NULL (ON DELETE SET NULL), and without an index on that
column every deleted row costs a scan of the whole table. On PostgreSQL it is built
CONCURRENTLY, so upgrading a busy database does not block incoming messages.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_messages_reply_to_id"


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                INDEX,
                "messages",
                ["reply_to_id"],
                unique=False,
                postgresql_concurrently=True,
            )
    else:
        op.create_index(INDEX, "messages", ["reply_to_id"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="messages")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("retention_days")
