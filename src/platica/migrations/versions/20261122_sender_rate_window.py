"""Per-sender rate window on contacts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

`contacts.rate_window_start` and `contacts.rate_window_count` count a sender's inbound messages
in the current window of RATE_LIMIT_PER_SENDER (see ratelimit.py). Kept on the contact row that
every inbound message already writes, the count costs nothing extra, holds across every
`platica serve` process, and does not grow with the number of senders.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_window_start", sa.DateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("rate_window_count", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("rate_window_count")
        batch_op.drop_column("rate_window_start")
