"""Media: one row per item of an inbound message, and the channel options that go with them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- `media`: each voice note, image, document or location of an inbound message, with its state
  (pending → fetched → understood | failed), what was understood of it, or why not. Rows come
  from `messages.media` (its items were never fetched: they are left `failed`, saying so), which
  is dropped.
- `channel_configs.language` (the customers' language, a hint for transcription), `vision`
  (images go to the model as images), `delete_media_after_use` (delete Twilio's copy once
  understood).
- Row-level security on `media`, like every other table.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "platica_account_rows"
VISIBLE = (
    "((SELECT platica_current_account()) IS NOT NULL"
    " AND account_id = (SELECT platica_current_account()))"
    " OR ((SELECT platica_current_account()) IS NULL AND (SELECT platica_is_service()))"
)
UNREAD = sa.text("state IN ('pending', 'fetched')")
BEFORE = "received before Plática understood media: not fetched"


def _kind(content_type: str) -> str:
    major = content_type.split("/")[0]
    if major in ("audio", "image"):
        return major
    return "document" if major in ("application", "text") else "other"


def upgrade() -> None:
    BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "media",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("url", sa.Text()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("content", sa.LargeBinary()),
        sa.Column("text", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("duration_seconds", sa.Float()),
        sa.Column("latitude", sa.Float()),
        sa.Column("longitude", sa.Float()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_media_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_media_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media")),
        sa.UniqueConstraint("message_id", "position", name=op.f("uq_media_message_id_position")),
    )
    op.create_index(op.f("ix_media_account_id"), "media", ["account_id"])
    op.create_index(
        "ix_media_unread",
        "media",
        ["message_id"],
        sqlite_where=UNREAD,
        postgresql_where=UNREAD,
    )
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("language", sa.String(8), nullable=False, server_default="es")
        )
        batch_op.add_column(
            sa.Column("vision", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column(
                "delete_media_after_use", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )

    bind = op.get_bind()
    media = sa.table(
        "media",
        *(
            sa.column(name)
            for name in (
                "account_id",
                "message_id",
                "position",
                "kind",
                "content_type",
                "url",
                "state",
                "attempts",
                "error",
                "created_at",
                "updated_at",
            )
        ),
    )
    rows = bind.execute(
        sa.text(
            "SELECT id, account_id, media, created_at FROM messages WHERE media IS NOT NULL"
            " AND CAST(media AS TEXT) NOT IN ('[]', '')"
        )
    )
    copied = []
    for message_id, account_id, items, created_at in rows:
        items = json.loads(items) if isinstance(items, str) else items
        for position, item in enumerate(items or []):
            content_type = str(item.get("content_type") or "")
            copied.append(
                {
                    "account_id": account_id,
                    "message_id": message_id,
                    "position": position,
                    "kind": _kind(content_type),
                    "content_type": content_type,
                    "url": item.get("url"),
                    "state": "failed",
                    "attempts": 0,
                    "error": BEFORE,
                    "created_at": created_at,
                    "updated_at": created_at,
                }
            )
    if copied:
        op.bulk_insert(media, copied)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("media")

    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE media ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {POLICY} ON media USING ({VISIBLE}) WITH CHECK ({VISIBLE})")


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "media",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                nullable=False,
                server_default="[]",
            )
        )
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        batch_op.drop_column("delete_media_after_use")
        batch_op.drop_column("vision")
        batch_op.drop_column("language")
    op.drop_index("ix_media_unread", table_name="media")
    op.drop_index("ix_media_account_id", table_name="media")
    op.drop_table("media")
