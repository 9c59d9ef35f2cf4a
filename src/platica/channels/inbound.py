"""Recording Twilio's webhooks. An inbound message: the message, its contact and conversation,
the webhook log entry and, on PostgreSQL, the conversation's reply due time, all in one
transaction. A status callback: the message's status, moved forward only
(conversations/statuses.py), and the log entry.

On PostgreSQL each is one statement in autocommit (channels/postgresql.py). On SQLite each is a
few SQLAlchemy Core statements, built here once at import, run in one transaction on the event
loop's thread (db.transaction): the rules below are the PostgreSQL statement's. Both lock rows
in the same order as everything else (contact, conversation, messages); on SQLite the
transaction holds the one write lock from its start, so what it reads first stays true.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, case, exists, func, insert, literal, select, update

from platica import models
from platica.channels import postgresql
from platica.channels.parsing import InboundMessage, media_rows
from platica.conversations.statuses import StatusOutcome, StatusUpdate, apply_status
from platica.db import Tx, Typed, constant, dialect_insert, execute_alone, fetch_one, transaction
from platica.deps import AppState
from platica.models import utcnow
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE

FLOOD_REASON = postgresql.FLOOD_REASON
FLOOD_MEDIA_ERROR = postgresql.FLOOD_MEDIA_ERROR
DUPLICATE_REASON = "MessageSid already recorded"


@dataclass(slots=True)
class WebhookEntry:
    """What webhook_logs keeps of one request, gathered while it is handled: a plain object,
    written by the request's own statements."""

    endpoint: str
    idempotency_token: str | None = None
    params: dict[str, list[str]] | None = None
    message_sid: str | None = None
    signature_valid: bool | None = None
    account_id: uuid.UUID | None = None
    status_code: int = 200
    outcome: str = ""
    reason: str | None = None

    def values(self, now: datetime) -> dict[str, Any]:
        """The entry as `INSERT_LOG`'s parameters (received `now`)."""
        return {
            "received_at": now,
            "endpoint": self.endpoint,
            "idempotency_token": self.idempotency_token,
            "params": self.params,
            "message_sid": self.message_sid,
            "signature_valid": self.signature_valid,
            "account_id": self.account_id,
            "status_code": self.status_code,
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    account_id: uuid.UUID
    debounce_seconds: float
    # None for a repeated delivery (the MessageSid is stored already).
    message_id: int | None
    conversation_id: int | None
    # Over the sender's flood limit (ratelimit.py): stored, never answered, contact flagged.
    flooded: bool
    # Whether its reply is queued already, in the same transaction (on PostgreSQL: the
    # conversation's reply_due_at, see jobs/queue.py).
    queued: bool


async def record_message(
    state: AppState, inbound: InboundMessage, entry: WebhookEntry
) -> Recorded | None:
    """Store the message once and log the webhook; None when no account owns its number."""
    if state.driver_pool is None:
        recorded = await _record_sqlite(state, inbound, entry)
    else:
        row = await postgresql.record(
            state.driver_pool, inbound, entry.values(utcnow()), state.limits.flood
        )
        recorded = None
        if row is not None:
            recorded = Recorded(
                account_id=row["account_id"],
                debounce_seconds=row["debounce_seconds"],
                message_id=row["message_id"],
                conversation_id=row["conversation_id"],
                flooded=row["flooded"],
                # The statement made the conversation due with the message.
                queued=row["message_id"] is not None and not row["flooded"],
            )
    if recorded is not None:
        entry.account_id = recorded.account_id
        entry.outcome, entry.reason = _outcome(recorded)
        entry.status_code = 200
    return recorded


def _outcome(recorded: Recorded) -> tuple[str, str | None]:
    if recorded.message_id is None:
        return "duplicate", DUPLICATE_REASON
    if recorded.flooded:
        return "flood", FLOOD_REASON
    return "accepted", None


async def record_status(
    state: AppState, update: StatusUpdate, entry: WebhookEntry
) -> StatusOutcome:
    """Apply a delivery status callback (conversations/statuses.py) and log it."""
    now = utcnow()
    if state.driver_pool is not None:
        outcome = await postgresql.apply_status(state.driver_pool, update, entry.values(now))
        entry.status_code, entry.outcome = 200, f"status_{outcome.value}"
        return outcome
    async with transaction(state.engine, durable=True) as tx:
        outcome = await apply_status(tx, update)
        entry.status_code, entry.outcome = 200, f"status_{outcome.value}"
        await tx.execute(INSERT_LOG, entry.values(now))
    return outcome


async def save_entry(state: AppState, entry: WebhookEntry) -> None:
    """Log a request that stores nothing else (a refused one)."""
    if state.driver_pool is not None:
        await execute_alone(state.driver_pool, INSERT_LOG, entry.values(utcnow()))
        return
    async with transaction(state.engine, durable=True) as tx:
        await tx.execute(INSERT_LOG, entry.values(utcnow()))


# --- SQLite: Core statements, one transaction --------------------------------------------------

_logs = cast(Table, models.WebhookLog.__table__)
INSERT_LOG = insert(_logs).values({c.key: bindparam(c.key) for c in _logs.c if c.key != "id"})

_configs = cast(Table, models.ChannelConfig.__table__).c
_contacts_table = cast(Table, models.Contact.__table__)
_contacts = _contacts_table.c
_conversations_table = cast(Table, models.Conversation.__table__)
_conversations = _conversations_table.c
_messages_table = cast(Table, models.Message.__table__)
_m = _messages_table.c

_now = bindparam("now", type_=_m.created_at.type)
# Whose the contact, conversation and message are.
_OWNER: dict[str, Any] = {"account_id": bindparam("account_id"), "channel": bindparam("channel")}
_sid = bindparam("sid", type_=_m.twilio_sid.type)


class _Config(NamedTuple):
    account_id: uuid.UUID
    debounce_seconds: float
    dup: bool


# The account that owns the number, and whether the MessageSid is stored already.
_CONFIG = Typed(
    select(
        _configs.account_id,
        _configs.debounce_seconds,
        exists().where(_m.twilio_sid == _sid).label("dup"),
    ).where(
        _configs.channel == bindparam("channel"), _configs.phone_number == bindparam("recipient")
    ),
    _Config,
)


class _Contact(NamedTuple):
    id: int
    limited: bool


def _upsert_contact() -> Any:
    """The contact, inserted or updated: its last message, profile, and the message counted in
    its flood window (RATE_LIMIT_FLOOD: a fixed window, ratelimit.Window); over the limit it is
    flagged, and `limited` says so."""
    statement = dialect_insert("sqlite", _contacts_table).values(
        **_OWNER,
        address=bindparam("sender"),
        profile_name=bindparam("profile_name"),
        wa_id=bindparam("wa_id"),
        opted_out=False,
        last_inbound_at=_now,
        created_at=_now,
        rate_window_start=_now,
        rate_window_count=1,
    )
    new = statement.excluded
    in_window = _contacts.rate_window_start > bindparam("window_over", type_=_now.type)
    limit = bindparam("flood_limit", type_=_contacts.rate_window_count.type)
    over = in_window & (_contacts.rate_window_count >= limit)
    return statement.on_conflict_do_update(
        index_elements=["account_id", "channel", "address"],
        set_={
            "last_inbound_at": new.last_inbound_at,
            "profile_name": func.coalesce(new.profile_name, _contacts.profile_name),
            "wa_id": func.coalesce(new.wa_id, _contacts.wa_id),
            "rate_window_start": case((in_window, _contacts.rate_window_start), else_=_now),
            "rate_window_count": case((in_window, _contacts.rate_window_count + 1), else_=1),
            "flagged_at": case((over, _now), else_=_contacts.flagged_at),
            "flag_reason": case((over, literal(FLOOD_FLAG)), else_=_contacts.flag_reason),
        },
    ).returning(_contacts.id, (_contacts.rate_window_count > limit).label("limited"))


_UPSERT_CONTACT = Typed(_upsert_contact(), _Contact)
_ACTIVE = constant(models.ConversationStatus.active)
# The contact's active conversation, touched; none if it has none (closed ones stay closed).
_TOUCH = (
    update(_conversations_table)
    .where(_conversations.contact_id == bindparam("contact_id"), _conversations.status == _ACTIVE)
    .values(
        last_message_at=case(
            (_conversations.last_message_at < _now, _now), else_=_conversations.last_message_at
        )
    )
    .returning(_conversations.id)
)
_OPEN = (
    dialect_insert("sqlite", _conversations_table)
    .values(
        **_OWNER,
        contact_id=bindparam("contact_id"),
        contact_address=bindparam("sender"),
        status=models.ConversationStatus.active,
        ai_enabled=True,
        created_at=_now,
        last_message_at=_now,
    )
    .on_conflict_do_nothing(
        index_elements=["contact_id"], index_where=_conversations.status == _ACTIVE
    )
    .returning(_conversations.id)
)
_INSERT_MESSAGE = (
    dialect_insert("sqlite", _messages_table)
    .values(
        **_OWNER,
        conversation_id=bindparam("conversation_id"),
        direction=models.Direction.inbound,
        author=models.Author.contact,
        body=bindparam("body"),
        twilio_sid=_sid,
        status=models.MessageStatus.received,
        reply_state=bindparam("reply_state"),
        note=bindparam("note"),
        attempts=0,
        part=0,
        simulated=bindparam("simulated"),
        created_at=_now,
        updated_at=_now,
    )
    .on_conflict_do_nothing(index_elements=["twilio_sid"])
    .returning(_m.id)
)

# A media item of the message (channels/parsing.py: media_rows); PostgreSQL's statement inserts
# the same rows.
INSERT_MEDIA = insert(cast(Table, models.MessageMedia.__table__)).values(
    account_id=bindparam("account_id"),
    message_id=bindparam("message_id"),
    position=bindparam("position"),
    kind=bindparam("kind"),
    content_type=bindparam("content_type"),
    url=bindparam("url"),
    state=bindparam("state"),
    attempts=0,
    text=bindparam("text"),
    error=bindparam("error"),
    latitude=bindparam("latitude"),
    longitude=bindparam("longitude"),
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)


async def _record_sqlite(
    state: AppState, inbound: InboundMessage, entry: WebhookEntry
) -> Recorded | None:
    now = utcnow()
    flood = state.limits.flood
    params: dict[str, Any] = {
        "sid": inbound.sid,
        "channel": inbound.channel.value,
        "recipient": inbound.recipient,
        "sender": inbound.sender,
        "now": now,
    }
    async with transaction(state.engine, durable=True) as tx:
        config = await fetch_one(tx, _CONFIG, params)
        if config is None:
            return None  # no account owns the number: nothing written
        params["account_id"] = config.account_id
        stored: tuple[int | None, int | None, bool] = (None, None, False)
        if not config.dup:
            stored = await _store(tx, inbound, params, flood.starts_after(now), flood.limit)
        # Not queued: the caller queues it in this process (runner.defer).
        recorded = Recorded(config.account_id, config.debounce_seconds, *stored, queued=False)
        entry.account_id = config.account_id
        entry.outcome, entry.reason = _outcome(recorded)
        entry.status_code = 200
        await tx.execute(INSERT_LOG, entry.values(now))
    return recorded


async def _store(
    tx: Tx, inbound: InboundMessage, params: dict[str, Any], window_over: datetime, limit: int
) -> tuple[int, int, bool]:
    """The message stored in its contact's active conversation (opened if there is none): its
    id, the conversation's, and whether it is over the sender's flood limit."""
    contact = await fetch_one(
        tx,
        _UPSERT_CONTACT,
        {
            **params,
            "profile_name": inbound.profile_name[:200] if inbound.profile_name else None,
            "wa_id": inbound.wa_id[:64] if inbound.wa_id else None,
            "window_over": window_over,
            "flood_limit": limit,
        },
    )
    assert contact is not None  # an upsert returns its row
    params["contact_id"] = contact.id
    conversation_id = (await tx.execute(_TOUCH, params)).scalar()
    if conversation_id is None:
        conversation_id = (await tx.execute(_OPEN, params)).scalar()
    message_id = (
        await tx.execute(
            _INSERT_MESSAGE,
            {
                **params,
                "conversation_id": conversation_id,
                "body": inbound.body,
                "reply_state": models.ReplyState.skipped
                if contact.limited
                else models.ReplyState.pending,
                "note": FLOOD_NOTE if contact.limited else None,
                "simulated": inbound.simulated,
            },
        )
    ).scalar()
    if conversation_id is None or message_id is None:
        # The transaction holds SQLite's write lock from its start, and found neither the
        # MessageSid nor the active conversation it now conflicts with: only another process
        # writing the file without the lock could do this. Roll back; Twilio retries.
        raise RuntimeError(f"{inbound.sid}: stored by someone else meanwhile")
    for row in media_rows(inbound):
        if contact.limited and row["state"] == models.MediaState.pending:
            # Never answered, so never read.
            row.update(state=models.MediaState.failed, error=FLOOD_MEDIA_ERROR)
        row.update(account_id=params["account_id"], message_id=message_id, now=params["now"])
        await tx.execute(INSERT_MEDIA, row)
    return message_id, conversation_id, contact.limited
