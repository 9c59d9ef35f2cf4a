"""Limits that pace instead of dropping, the daily token budget, parked conversations, simulated
messages

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

- `accounts.reply_pace_at`: RATE_LIMIT_PER_ACCOUNT paces an account's AI replies (counted here,
  so it holds across processes) instead of leaving messages over it unanswered.
- `channel_configs.daily_token_budget`, `busy_message`, `tokens_day`, `tokens_used`: a budget of
  LLM tokens per UTC day; once spent, each conversation gets the busy message once.
- `contacts.flagged_at`, `flag_reason`: a sender over the flood limit (RATE_LIMIT_FLOOD), whose
  messages past it are stored unanswered.
- `conversations.busy_sent_at`: when the conversation got the busy message.
- `conversations.crash_count`, `parked_at`, `parked_error`: a conversation whose reply task keeps
  crashing is parked, with its error, instead of being retried forever.
- `messages.simulated`: written in the dashboard's simulator, or answering such a message; never
  sent to a real phone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARKED = sa.text("parked_at IS NOT NULL")
BUSY_MESSAGE = "We're getting a lot of messages right now. We'll get back to you as soon as we can."


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reply_pace_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_token_budget", sa.Integer()))
        batch_op.add_column(
            sa.Column("busy_message", sa.Text(), nullable=False, server_default=BUSY_MESSAGE)
        )
        batch_op.add_column(sa.Column("tokens_day", sa.Date()))
        batch_op.add_column(
            sa.Column("tokens_used", sa.Integer(), nullable=False, server_default="0")
        )
    # The model gives the default; the server default only filled the existing rows.
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.alter_column("busy_message", server_default=None)
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flagged_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("flag_reason", sa.String(length=200)))
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("busy_sent_at", sa.DateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("crash_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("parked_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("parked_error", sa.Text()))
        batch_op.create_index(
            "ix_conversations_parked",
            ["parked_at"],
            unique=False,
            sqlite_where=PARKED,
            postgresql_where=PARKED,
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("simulated", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("simulated")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_parked")
        batch_op.drop_column("parked_error")
        batch_op.drop_column("parked_at")
        batch_op.drop_column("crash_count")
        batch_op.drop_column("busy_sent_at")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("flag_reason")
        batch_op.drop_column("flagged_at")
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.drop_column("tokens_used")
        batch_op.drop_column("tokens_day")
        batch_op.drop_column("busy_message")
        batch_op.drop_column("daily_token_budget")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("reply_pace_at")
