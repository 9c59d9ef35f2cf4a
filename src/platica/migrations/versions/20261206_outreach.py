"""Outreach: templates, proactive messages and broadcasts

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

- `templates`: the WhatsApp/SMS templates an account may send (Twilio's Content API).
- `broadcasts` and `broadcast_recipients`: one message to many, sent in the background.
- `idempotency_keys`: a proactive message's Idempotency-Key, so a client's retry never sends twice.
- `messages.content_sid`, `messages.content_variables`: a message sent as a template.
- `channel_configs.broadcast_mps`: a broadcast's pace (20/s on WhatsApp, 1/s on SMS at first).
- Row-level security on the new tables, like every other table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "platica_account_rows"
VISIBLE = (
    "((SELECT platica_current_account()) IS NOT NULL"
    " AND account_id = (SELECT platica_current_account()))"
    " OR ((SELECT platica_current_account()) IS NULL AND (SELECT platica_is_service()))"
)
SENDING = sa.text("status = 'sending'")
QUEUED = sa.text("state = 'queued'")
NEW_TABLES = ("templates", "broadcasts", "broadcast_recipients", "idempotency_keys")


def _account(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"], ["accounts.id"], name=f"fk_{table}_account_id_accounts", ondelete="CASCADE"
    )


def upgrade() -> None:
    BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    Moment = sa.DateTime(timezone=True)
    op.create_table(
        "templates",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("variables", Json, nullable=False),
        sa.Column("approval", sa.String(32), nullable=False),
        sa.Column("rejection_reason", sa.Text()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("synced_at", Moment),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("updated_at", Moment, nullable=False),
        _account("templates"),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint("account_id", "sid", name="uq_templates_account_id_sid"),
    )
    op.create_table(
        "broadcasts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("template_id", BigId),
        sa.Column("content_sid", sa.String(64)),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("paced_at", Moment),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("finished_at", Moment),
        sa.Column("canceled_at", Moment),
        _account("broadcasts"),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name="fk_broadcasts_template_id_templates",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcasts"),
    )
    op.create_index(
        "ix_broadcasts_sending",
        "broadcasts",
        ["account_id", "channel", "id"],
        sqlite_where=SENDING,
        postgresql_where=SENDING,
    )
    op.create_table(
        "broadcast_recipients",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("broadcast_id", BigId, nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("variables", Json),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("message_id", BigId),
        sa.Column("handed_at", Moment),
        _account("broadcast_recipients"),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name="fk_broadcast_recipients_broadcast_id_broadcasts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_broadcast_recipients_message_id_messages",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_recipients"),
    )
    op.create_index("ix_broadcast_recipients_account_id", "broadcast_recipients", ["account_id"])
    op.create_index("ix_broadcast_recipients_message_id", "broadcast_recipients", ["message_id"])
    op.create_index(
        "ix_broadcast_recipients_broadcast_state",
        "broadcast_recipients",
        ["broadcast_id", "state", "id"],
    )
    op.create_index(
        "ix_broadcast_recipients_queued",
        "broadcast_recipients",
        ["broadcast_id", "id"],
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("created_at", Moment, nullable=False),
        _account("idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_idempotency_keys_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_message_id", "idempotency_keys", ["message_id"])
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sid", sa.String(64)))
        batch_op.add_column(sa.Column("content_variables", Json))

    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("broadcast_mps", sa.Float()))
    op.execute(
        "UPDATE channel_configs SET broadcast_mps ="
        " CASE WHEN channel = 'whatsapp' THEN 20.0 ELSE 1.0 END"
    )
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.alter_column("broadcast_mps", existing_type=sa.Float(), nullable=False)

    if op.get_bind().dialect.name == "postgresql":
        for table in NEW_TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY {POLICY} ON {table} USING ({VISIBLE}) WITH CHECK ({VISIBLE})"
            )


def downgrade() -> None:
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.drop_column("broadcast_mps")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("content_variables")
        batch_op.drop_column("content_sid")
    op.drop_table("idempotency_keys")
    op.drop_table("broadcast_recipients")
    op.drop_table("broadcasts")
    op.drop_table("templates")
