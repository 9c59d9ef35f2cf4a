"""Broadcasts: one message (free text or an approved template) to up to 10,000 recipients,
handed over in the background at the channel's `broadcast_mps` (broadcaster.py).

Created whole or not at all: a template variable missing for any recipient refuses the
broadcast (422) before anything is stored. Numbers that are not E.164, and repeats, are stored
as skipped with why, and counted; opted-out contacts (and, for free text on WhatsApp, contacts
outside the 24-hour window) are skipped when their turn comes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from platica.config import strip_channel_prefix
from platica.conversations.operators import get_config
from platica.errors import Conflict, NotFound, Unprocessable
from platica.logging import get_logger
from platica.metrics import OUTREACH
from platica.models import (
    Broadcast,
    BroadcastRecipient,
    BroadcastStatus,
    Channel,
    ChannelConfig,
    Message,
    MessageStatus,
    RecipientState,
    Template,
    utcnow,
)
from platica.outreach.templates import check_variables, fill, find_template

log = get_logger(__name__)

MAX_RECIPIENTS = 10_000
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
INVALID_NUMBER = "not a phone number in E.164 form (+ country code and number)"
REPEATED = "listed more than once: sent once"


@dataclass(frozen=True, slots=True)
class Recipient:
    to: str
    variables: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewBroadcast:
    recipients: Sequence[Recipient]
    body: str | None = None
    template: str | None = None
    # Variables every recipient shares; a recipient's own override them.
    variables: Mapping[str, Any] | None = None
    name: str = ""


def normalise(address: str) -> str:
    """A number as written in a list: spaces, dashes, dots and brackets dropped."""
    return re.sub(r"[\s\-().]", "", strip_channel_prefix(address.strip()))


async def create(
    session: AsyncSession, account_id: uuid.UUID, channel: Channel, new: NewBroadcast
) -> Broadcast:
    """Store the broadcast and its recipients (the caller commits; the broadcaster picks it
    up)."""
    await get_config(session, channel, account_id)
    if not new.recipients:
        raise Unprocessable("a broadcast needs at least one recipient")
    if len(new.recipients) > MAX_RECIPIENTS:
        raise Unprocessable(f"a broadcast takes at most {MAX_RECIPIENTS:,} recipients")
    template: Template | None = None
    if new.template is not None:
        template = await find_template(session, account_id, channel, new.template)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, recipient in enumerate(new.recipients):
        address = normalise(recipient.to)
        row: dict[str, Any] = {
            "account_id": account_id,
            "address": address[:64],
            "variables": None,
            "state": RecipientState.queued,
            "reason": None,
        }
        if template is not None:
            merged = {**(new.variables or {}), **(recipient.variables or {})}
            try:
                row["variables"] = check_variables(template, channel, merged)
            except Unprocessable as error:
                raise Unprocessable(
                    f"recipients[{index}] ({_masked(address)}): {error.message}"
                ) from None
        elif recipient.variables:
            raise Unprocessable(
                f"recipients[{index}]: variables are for templates; this broadcast is free text"
            )
        if not E164.match(address):
            row.update(state=RecipientState.skipped, reason=INVALID_NUMBER)
        elif address in seen:
            row.update(state=RecipientState.skipped, reason=REPEATED)
        seen.add(address)
        rows.append(row)
    broadcast = Broadcast(
        account_id=account_id,
        channel=channel,
        name=new.name,
        template_id=template.id if template else None,
        content_sid=template.sid if template else None,
        body=template.body if template else (new.body or ""),
        status=BroadcastStatus.sending,
        total=len(rows),
    )
    session.add(broadcast)
    await session.flush()
    for row in rows:
        row["broadcast_id"] = broadcast.id
    await session.execute(insert(BroadcastRecipient), rows)
    skipped = sum(1 for row in rows if row["state"] == RecipientState.skipped)
    if skipped:
        OUTREACH.labels(channel.value, "broadcast", "skipped").inc(skipped)
    log.info(
        "broadcast.created",
        broadcast_id=broadcast.id,
        recipients=len(rows),
        skipped=skipped,
        template=broadcast.content_sid,
    )
    return broadcast


def _masked(address: str) -> str:
    return address[:4] + "…" + address[-2:] if len(address) > 6 else "…"


def personal_body(broadcast_body: str, variables: Mapping[str, str] | None) -> str:
    """What one recipient reads: the template's text with their values."""
    return fill(broadcast_body, variables or {})


@dataclass
class Progress:
    """Each recipient counted once, by how far it got. queued: not yet handed to Twilio;
    sent: accepted by Twilio, no delivery report yet; delivered; read; failed (failed or
    undelivered); skipped (opted out, invalid, repeated, outside the window); canceled (the
    broadcast was canceled first); dry_run (stored, not sent: Twilio is not configured)."""

    total: int = 0
    queued: int = 0
    sent: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0
    skipped: int = 0
    canceled: int = 0
    dry_run: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Recipients that will not change any more but for delivery reports."""
        return self.total - self.queued


_QUEUED_STATUSES = {MessageStatus.pending, MessageStatus.sending}
_SENT_STATUSES = {
    MessageStatus.accepted,
    MessageStatus.scheduled,
    MessageStatus.queued,
    MessageStatus.sent,
}
_FAILED_STATUSES = {MessageStatus.failed, MessageStatus.undelivered, MessageStatus.canceled}
_recipients = cast(Table, BroadcastRecipient.__table__)
_messages = cast(Table, Message.__table__)


async def progress(session: AsyncSession, broadcast_id: int) -> Progress:
    rows = await session.execute(
        select(
            _recipients.c.state,
            _messages.c.status,
            _recipients.c.reason,
            func.count().label("n"),
        )
        .select_from(_recipients.outerjoin(_messages, _messages.c.id == _recipients.c.message_id))
        .where(_recipients.c.broadcast_id == broadcast_id)
        .group_by(_recipients.c.state, _messages.c.status, _recipients.c.reason)
    )
    counted = Progress()
    for state, status, reason, n in rows:
        counted.total += n
        if state == RecipientState.queued:
            counted.queued += n
        elif state == RecipientState.skipped:
            counted.skipped += n
            key = reason or "skipped"
            counted.skip_reasons[key] = counted.skip_reasons.get(key, 0) + n
        elif state == RecipientState.canceled:
            counted.canceled += n
        elif status is None or status in _QUEUED_STATUSES:
            counted.queued += n
        elif status in _SENT_STATUSES:
            counted.sent += n
        elif status == MessageStatus.delivered:
            counted.delivered += n
        elif status == MessageStatus.read:
            counted.read += n
        elif status == MessageStatus.dry_run:
            counted.dry_run += n
        elif status in _FAILED_STATUSES:
            counted.failed += n
        else:
            counted.sent += n
    return counted


async def get_broadcast(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID | None, broadcast_id: int
) -> Broadcast:
    statement = select(Broadcast).where(Broadcast.id == broadcast_id, Broadcast.channel == channel)
    if account_id is not None:
        statement = statement.where(Broadcast.account_id == account_id)
    found = await session.scalar(statement)
    if found is None:
        raise NotFound(f"no {channel.value} broadcast {broadcast_id}")
    return found


async def list_broadcasts(
    session: AsyncSession, channel: Channel, account_id: uuid.UUID | None, limit: int = 50
) -> list[Broadcast]:
    statement = select(Broadcast).where(Broadcast.channel == channel)
    if account_id is not None:
        statement = statement.where(Broadcast.account_id == account_id)
    return list(await session.scalars(statement.order_by(Broadcast.id.desc()).limit(limit)))


async def cancel(session: AsyncSession, broadcast: Broadcast, now: datetime | None = None) -> int:
    """Stop handing the broadcast's recipients over (idempotent); how many were left. Those
    handed over already are sent."""
    if broadcast.status != BroadcastStatus.sending:
        if broadcast.status == BroadcastStatus.canceled:
            return 0
        raise Conflict("the broadcast is done: every recipient was handed over already")
    now = now or utcnow()
    # Locks the broadcast row first, as the broadcaster does: a batch being handed over
    # finishes before the cancellation, and none starts after it.
    stopped = await session.execute(
        update(Broadcast)
        .where(Broadcast.id == broadcast.id, Broadcast.status == BroadcastStatus.sending)
        .values(status=BroadcastStatus.canceled, canceled_at=now, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(stopped, "rowcount", 0):
        # The last recipients were handed over meanwhile.
        await session.refresh(broadcast)
        raise Conflict("the broadcast is done: every recipient was handed over already")
    left = await session.execute(
        update(BroadcastRecipient)
        .where(
            BroadcastRecipient.broadcast_id == broadcast.id,
            BroadcastRecipient.state == RecipientState.queued,
        )
        .values(state=RecipientState.canceled)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(broadcast)
    count = int(getattr(left, "rowcount", 0) or 0)
    OUTREACH.labels(broadcast.channel, "broadcast", "canceled").inc(count)
    log.info("broadcast.canceled", broadcast_id=broadcast.id, left=count)
    return count


async def view(session: AsyncSession, broadcast: Broadcast) -> dict[str, Any]:
    """The broadcast with its progress, as the API shows it (schemas.BroadcastRead)."""
    counted = await progress(session, broadcast.id)
    mps = await session.scalar(
        select(ChannelConfig.broadcast_mps).where(
            ChannelConfig.account_id == broadcast.account_id,
            ChannelConfig.channel == broadcast.channel,
        )
    )
    return {
        "id": broadcast.id,
        "name": broadcast.name,
        "channel": broadcast.channel,
        "status": broadcast.status,
        "template_sid": broadcast.content_sid,
        "body": broadcast.body,
        "mps": mps or 0.0,
        "total": counted.total,
        "queued": counted.queued,
        "sent": counted.sent,
        "delivered": counted.delivered,
        "read": counted.read,
        "failed": counted.failed,
        "skipped": counted.skipped,
        "canceled": counted.canceled,
        "dry_run": counted.dry_run,
        "skip_reasons": counted.skip_reasons,
        "created_at": broadcast.created_at,
        "finished_at": broadcast.finished_at,
        "canceled_at": broadcast.canceled_at,
    }
