"""A WhatsApp conversation whose contact sent a voice note, a photo, their location and an invoice
(a PDF Plática has not read yet), stored straight into the database with real bytes
(tests/media/samples.py), for the media tests of the dashboard and the API."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from platica.media.kinds import location_text
from platica.models import Channel, Direction, MediaKind, MediaState, ReplyState
from tests.factories import CONTACT
from tests.media.samples import INVOICE_LINES, jpeg, ogg_opus, pdf
from tests.records import add_conversation, add_media, add_message

VOICE = ogg_opus(4.0)
PHOTO = jpeg(320, 240)
INVOICE = pdf(INVOICE_LINES)
TRANSCRIPT = "Hola, ¿me guardan dos conchas y un pan de muerto para mañana temprano?"
CAPTION = "Así quedó el pastel de la semana pasada"
LATITUDE, LONGITUDE = 17.065418, -96.723649
PLACE = "Panadería La Espiga"
ADDRESS = "Calle de Macedonio Alcalá 401, Oaxaca"
REPLY = "¡Claro! Te guardamos dos conchas y un pan de muerto para mañana a las 8."


@dataclass(frozen=True)
class MediaThread:
    """The seeded conversation and its media items' ids."""

    account_id: uuid.UUID
    conversation_id: int
    voice: int  # understood, its bytes kept, with its transcript
    photo: int  # understood, its bytes kept
    location: int  # understood, no file
    invoice: int  # pending: no bytes kept, only Twilio's URL (`invoice_url`)

    @property
    def path(self) -> str:
        return f"/conversations/whatsapp/{self.conversation_id}"

    def media_path(self, media_id: int) -> str:
        return f"{self.path}/media/{media_id}"


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def seed_media_thread(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    address: str = CONTACT,
    invoice_url: str | None = None,
) -> MediaThread:
    """The conversation, already answered (so that no reply task runs on it): four messages from
    the contact, one item each, then the AI's reply."""
    conversation = await add_conversation(session, account_id, address, Channel.whatsapp)

    async def sent(kind: MediaKind, body: str = "", **columns: Any) -> int:
        message = await add_message(
            session, conversation, body=body, reply_state=ReplyState.answered
        )
        return (await add_media(session, message, kind, **columns)).id

    voice = await sent(
        MediaKind.audio,
        content_type="audio/ogg; codecs=opus",
        content=VOICE,
        sha256=sha256(VOICE),
        text=TRANSCRIPT,
        duration_seconds=4.0,
    )
    photo = await sent(
        MediaKind.image, CAPTION, content_type="image/jpeg", content=PHOTO, sha256=sha256(PHOTO)
    )
    location = await sent(
        MediaKind.location,
        text=location_text(LATITUDE, LONGITUDE, ADDRESS, PLACE),
        latitude=LATITUDE,
        longitude=LONGITUDE,
    )
    invoice = await sent(
        MediaKind.document,
        "Te paso la factura",
        content_type="application/pdf",
        url=invoice_url,
        state=MediaState.pending,
    )
    await add_message(session, conversation, Direction.outbound, body=REPLY)
    return MediaThread(account_id, conversation.id, voice, photo, location, invoice)
