"""Proactive messages: POST /api/{channel}/messages, a message to a contact who may have no
conversation yet (one is opened).

Free text, or an approved template with its variables (checked before anything is stored: a
missing one is a 422, never a broken message). Refused (409) for an opted-out contact, and for
free text outside WhatsApp's 24-hour window. An Idempotency-Key makes a client's retry safe: the
same key never stores a second message and answers with the first; the same key with another
request is refused (422).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from platica.conversations.operators import get_config
from platica.db import Rows
from platica.errors import Conflict, Unprocessable
from platica.logging import get_logger
from platica.metrics import OUTREACH
from platica.models import Author, Channel, IdempotencyKey, Message, utcnow
from platica.outreach.handing import Outgoing, Refused, hand_over
from platica.outreach.templates import fill_template

log = get_logger(__name__)


class SessionTx:
    """An ORM session's transaction as the Core statements' `Tx`."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        bind = session.get_bind()
        self.dialect_name: str = bind.dialect.name

    async def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> Rows:
        result = await self._session.execute(statement, dict(params or {}))
        return cast(Rows, result)


@dataclass(frozen=True, slots=True)
class Proactive:
    """What to send: `body`, or `template` (its name or ContentSid) with `variables`."""

    to: str
    body: str | None = None
    template: str | None = None
    variables: Mapping[str, Any] | None = None

    def fingerprint(self, channel: Channel) -> str:
        """The request, for telling a retry from another request under the same key."""
        document = {
            "channel": channel.value,
            "to": self.to,
            "body": self.body,
            "template": self.template,
            "variables": {str(k): str(v) for k, v in (self.variables or {}).items()},
        }
        encoded = json.dumps(document, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class Sent:
    message: Message
    # False when an earlier request with the same Idempotency-Key stored it.
    created: bool


async def _stored(session: AsyncSession, message_id: int) -> Message:
    message = await session.scalar(
        select(Message).where(Message.id == message_id).options(selectinload(Message.media))
    )
    assert message is not None
    return message


async def _replay(
    session: AsyncSession, account_id: uuid.UUID, key: str, fingerprint: str
) -> Sent | None:
    """The first request's message under this key, if there was one."""
    found = await session.get(IdempotencyKey, (account_id, key))
    if found is None:
        return None
    if found.request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was used for a different request; use a new key for a new message"
        )
    return Sent(await _stored(session, found.message_id), created=False)


async def send_proactive(
    session: AsyncSession,
    account_id: uuid.UUID,
    channel: Channel,
    request: Proactive,
    idempotency_key: str | None = None,
) -> Sent:
    """Store the message for sending (the caller commits, then wakes the runner for its
    conversation); with a key already used, the message it stored."""
    await get_config(session, channel, account_id)  # 404 when the channel has no number
    fingerprint = request.fingerprint(channel)
    if idempotency_key is not None:
        replayed = await _replay(session, account_id, idempotency_key, fingerprint)
        if replayed is not None:
            return replayed
    if request.template is not None:
        filled = await fill_template(
            session, account_id, channel, request.template, request.variables
        )
        outgoing = Outgoing(filled.body, filled.content_sid, filled.variables, Author.operator)
    else:
        assert request.body is not None
        outgoing = Outgoing(request.body)
    handed = await hand_over(
        SessionTx(session), account_id, channel, request.to, outgoing, utcnow()
    )
    if isinstance(handed, Refused):
        OUTREACH.labels(channel.value, "proactive", "refused").inc()
        raise Conflict(handed.reason)
    if idempotency_key is not None:
        try:
            async with session.begin_nested():
                session.add(
                    IdempotencyKey(
                        account_id=account_id,
                        key=idempotency_key,
                        request_hash=fingerprint,
                        message_id=handed.message_id,
                    )
                )
        except IntegrityError:
            # A concurrent request with the same key stored its message first: this one's is
            # dropped with the transaction, and the first one's is the answer.
            await session.rollback()
            replayed = await _replay(session, account_id, idempotency_key, fingerprint)
            if replayed is None:
                raise
            return replayed
    OUTREACH.labels(channel.value, "proactive", "queued").inc()
    log.info(
        "outreach.proactive",
        message_id=handed.message_id,
        conversation_id=handed.conversation_id,
        template=outgoing.content_sid,
    )
    return Sent(await _stored(session, handed.message_id), created=True)
