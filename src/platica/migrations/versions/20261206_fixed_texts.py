"""Fixed texts in Spanish and English, editable per channel

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- `channel_configs.opt_out_message`, `opt_in_message`, `offline_message`, `handoff_message`: new
  editable texts (the confirmations were hard-coded, the offline reply too; the handoff notice is
  new).
- `system_prompt`, `fallback_message`, `help_message`, `busy_message` become nullable. NULL means
  "the built-in text in the channel's `language`" (platica/texts.py): the old English defaults
  nobody edited become NULL, so each account follows its language; edited texts stay (the
  Spanish built-in texts, which a downgrade writes, become NULL too).

Downgrade writes the built-in text of each channel's language back into the NULL columns (what the
customers were getting), then drops the new columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = ("opt_out_message", "opt_in_message", "offline_message", "handoff_message")
# The defaults the models gave until now: a row still holding one was never edited.
OLD_DEFAULTS = {
    "system_prompt": (
        "You are a helpful, friendly assistant answering customers by text message. Be brief."
    ),
    "fallback_message": "Sorry, we can't answer right now. We'll get back to you soon.",
    "help_message": "This is an automated assistant. Reply STOP to stop receiving messages.",
    "busy_message": (
        "We're getting a lot of messages right now. We'll get back to you as soon as we can."
    ),
}
# The built-in Spanish texts at this revision (texts.py may change later; this must not).
SPANISH = {
    "system_prompt": (
        "Eres un asistente amable y servicial que atiende a los clientes por mensaje de "
        "texto. Sé breve y responde en el idioma del cliente."
    ),
    "fallback_message": (
        "Lo sentimos, ahora no podemos responder. Te contestaremos lo antes posible."
    ),
    "help_message": (
        "Este es un asistente automático: escribe tu pregunta y te responderemos. Responde "
        "STOP para dejar de recibir mensajes."
    ),
    "busy_message": (
        "Estamos recibiendo muchos mensajes en este momento. Te responderemos lo antes posible."
    ),
}

configs = sa.table(
    "channel_configs",
    sa.column("language", sa.String()),
    *(sa.column(name, sa.Text()) for name in OLD_DEFAULTS),
)


def upgrade() -> None:
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        for name in NEW:
            batch_op.add_column(sa.Column(name, sa.Text(), nullable=True))
        for name in OLD_DEFAULTS:
            batch_op.alter_column(name, existing_type=sa.Text(), nullable=True)
    for name, old in OLD_DEFAULTS.items():
        column = configs.c[name]
        # The Spanish text too: a downgrade wrote it, nobody chose it.
        op.execute(configs.update().where(column.in_([old, SPANISH[name]])).values({name: None}))
        # Blank is "the built-in text" too; one spelling of it is enough.
        op.execute(configs.update().where(sa.func.trim(column) == "").values({name: None}))


def downgrade() -> None:
    for name, english in OLD_DEFAULTS.items():
        column = configs.c[name]
        text = sa.case((configs.c.language == "en", english), else_=SPANISH[name])
        op.execute(configs.update().where(column.is_(None)).values({name: text}))
    with op.batch_alter_table("channel_configs", schema=None) as batch_op:
        for name in OLD_DEFAULTS:
            batch_op.alter_column(name, existing_type=sa.Text(), nullable=False)
        for name in reversed(NEW):
            batch_op.drop_column(name)
