"""ORM tables of SPEC §4: accounts, api_keys, channel_configs, contacts, conversations, messages,
webhook_logs; and media, templates, broadcasts, broadcast_recipients, idempotency_keys,
dashboard_sessions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from platica.db import Base

BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Channel(StrEnum):
    whatsapp = "whatsapp"
    sms = "sms"


class Direction(StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class Author(StrEnum):
    """Who wrote a message."""

    contact = "contact"
    ai = "ai"
    operator = "operator"
    system = "system"
    # Sent to the contact as part of a broadcast (outreach/broadcasts.py).
    broadcast = "broadcast"


class ConversationStatus(StrEnum):
    active = "active"
    closed = "closed"


class MessageStatus(StrEnum):
    """Twilio's message statuses, plus our own `pending` (stored, not yet sent) and `dry_run`."""

    received = "received"
    pending = "pending"
    accepted = "accepted"
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    undelivered = "undelivered"
    delivered = "delivered"
    read = "read"
    canceled = "canceled"
    # Stored and logged but deliberately not sent: Twilio is not configured.
    dry_run = "dry_run"


# How far along each status is: a callback may only move a message to a higher rank (and not
# from a final status, see status_move).
STATUS_RANK: dict[MessageStatus, int] = {
    MessageStatus.received: 0,
    MessageStatus.pending: 0,
    MessageStatus.accepted: 1,
    MessageStatus.scheduled: 1,
    MessageStatus.queued: 2,
    MessageStatus.sending: 3,
    MessageStatus.sent: 4,
    MessageStatus.failed: 5,
    MessageStatus.undelivered: 5,
    MessageStatus.canceled: 5,
    MessageStatus.dry_run: 5,
    MessageStatus.delivered: 6,
    MessageStatus.read: 7,
}
# Nothing Twilio reports later changes these: the message was never handed on to a carrier
# (failed, canceled), or never sent at all (dry_run). `undelivered` is not final: carriers retry,
# and a later `delivered` supersedes it.
FINAL_STATUSES = frozenset({MessageStatus.failed, MessageStatus.canceled, MessageStatus.dry_run})
# The message reached the handset: whatever error an earlier report gave no longer applies.
_REACHED = frozenset({MessageStatus.delivered, MessageStatus.read})


@dataclass(frozen=True, slots=True)
class StatusMove:
    """How a status report may change a stored message."""

    status: MessageStatus
    # The stored statuses it replaces; from any other the report is stale (or, from a final
    # status, ignored).
    replaces: tuple[MessageStatus, ...]
    # It clears the stored error code and message; otherwise its own error, if any, replaces the
    # stored one and an error it does not mention stays.
    clears_error: bool


def status_move(status: MessageStatus) -> StatusMove:
    """The one rule for applying a status report, written as SQL once in
    conversations/statuses.py (ADVANCE): the status webhook on both databases and the reports
    that came before the SID was stored run it. Statuses only move forward, never out of a final
    status, and a message that reached the handset carries no error."""
    return _STATUS_MOVES[status]


_STATUS_MOVES = {
    status: StatusMove(
        status,
        tuple(
            earlier
            for earlier, rank in STATUS_RANK.items()
            if rank < STATUS_RANK[status] and earlier not in FINAL_STATUSES
        ),
        status in _REACHED,
    )
    for status in MessageStatus
}


class ReplyState(StrEnum):
    """Where an inbound message stands in the reply pipeline."""

    pending = "pending"
    answered = "answered"
    skipped = "skipped"
    failed = "failed"


class MediaKind(StrEnum):
    """What a media item is, as far as understanding it goes (media/kinds.py)."""

    audio = "audio"
    image = "image"
    document = "document"
    location = "location"
    other = "other"


class MediaState(StrEnum):
    """Where a media item stands: fetched from Twilio, then understood (its text), or failed
    (its error); the reply goes out either way."""

    pending = "pending"
    fetched = "fetched"
    understood = "understood"
    failed = "failed"


class TemplateApproval(StrEnum):
    """A template's WhatsApp approval, as Twilio's Content API reports it (lower-cased); only
    `approved` ones may be sent on WhatsApp. `unknown`: a state Twilio did not document."""

    approved = "approved"
    pending = "pending"
    received = "received"
    rejected = "rejected"
    paused = "paused"
    disabled = "disabled"
    unsubmitted = "unsubmitted"
    unknown = "unknown"


class BroadcastStatus(StrEnum):
    sending = "sending"
    done = "done"
    canceled = "canceled"


class RecipientState(StrEnum):
    """Where a broadcast's recipient stands: waiting for its turn, handed over as a message
    (whose own status then says how far it got), skipped (opted out, invalid, a duplicate), or
    never sent because the broadcast was canceled first."""

    queued = "queued"
    handed = "handed"
    skipped = "skipped"
    canceled = "canceled"


def _default_broadcast_mps(context: Any) -> float:
    """WhatsApp senders take 80 messages/s and more; an SMS long code 1 segment/s."""
    channel = context.get_current_parameters().get("channel")
    return 20.0 if channel == Channel.whatsapp else 1.0


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # The Supabase user (JWT `sub`) that owns this account, if any.
    auth_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Days to keep messages (and webhook logs) for; None keeps them. See conversations/retention.py.
    retention_days: Mapped[int | None] = mapped_column(Integer)
    # RATE_LIMIT_PER_ACCOUNT's pacing of AI replies, when set: the moment the account's next
    # reply is due if replies came at exactly the limit's pace (ratelimit.py).
    reply_pace_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="default")
    # The first characters of the key, shown to operators so they can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ChannelConfig(Base):
    __tablename__ = "channel_configs"
    __table_args__ = (
        UniqueConstraint("account_id", "channel"),
        UniqueConstraint("channel", "phone_number"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[Channel] = mapped_column(String(16))
    # E.164, without the "whatsapp:" prefix.
    phone_number: Mapped[str] = mapped_column(String(32))
    # The fixed texts and the system prompt: None (or empty) means the built-in one in the
    # channel's `language` (texts.py), so only edited texts are stored.
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # None: the OPENAI_MODEL setting.
    openai_model: Mapped[str | None] = mapped_column(String(100))
    max_tokens: Mapped[int] = mapped_column(Integer, default=300)
    temperature: Mapped[float] = mapped_column(Float, default=0.7)
    context_messages: Mapped[int] = mapped_column(Integer, default=10)
    debounce_seconds: Mapped[float] = mapped_column(Float, default=2.0)
    sms_max_chars: Mapped[int] = mapped_column(Integer, default=160)
    fallback_message: Mapped[str | None] = mapped_column(Text)
    help_message: Mapped[str | None] = mapped_column(Text)
    opt_out_message: Mapped[str | None] = mapped_column(Text)
    opt_in_message: Mapped[str | None] = mapped_column(Text)
    # What the offline responder (no LLM configured) says before echoing the customer.
    offline_message: Mapped[str | None] = mapped_column(Text)
    # Sent to the customer when an operator takes the conversation over (handoff).
    handoff_message: Mapped[str | None] = mapped_column(Text)
    handoff_timeout_minutes: Mapped[int] = mapped_column(Integer, default=60)
    ai_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The customers' language ("es" or "en"): the built-in texts' language, and a hint for
    # transcribing their voice notes.
    language: Mapped[str] = mapped_column(String(8), default="es", server_default="es")
    # Images go to the model as images (the model must accept them); otherwise it reads that an
    # image arrived, with its caption.
    vision: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Delete a media item from Twilio once it has been understood (Plática keeps its copy).
    delete_media_after_use: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # LLM tokens (prompt + completion) the channel's replies may spend per UTC day; None: no
    # budget. Once spent, each conversation gets `busy_message` once that day, and no LLM call.
    daily_token_budget: Mapped[int | None] = mapped_column(Integer)
    busy_message: Mapped[str | None] = mapped_column(Text)
    # Messages per second a broadcast may send on this channel (outreach/broadcaster.py).
    broadcast_mps: Mapped[float] = mapped_column(Float, default=_default_broadcast_mps)
    # What the budget has counted: tokens spent on `tokens_day` (UTC), while a budget is set.
    tokens_day: Mapped[date | None] = mapped_column(Date)
    tokens_used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Contact(Base):
    """One person on one channel of one account, with their opt-out state."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("account_id", "channel", "address"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[Channel] = mapped_column(String(16))
    # E.164 (or a WhatsApp user id), without the "whatsapp:" prefix.
    address: Mapped[str] = mapped_column(String(64))
    profile_name: Mapped[str | None] = mapped_column(String(200))
    wa_id: Mapped[str | None] = mapped_column(String(64))
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The sender's current window of RATE_LIMIT_PER_SENDER (ratelimit.py): when it began and
    # how many inbound messages it has seen.
    rate_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rate_window_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set when the contact went over RATE_LIMIT_FLOOD (its messages past the limit are stored,
    # never answered), with why; operators see it.
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    flag_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # At most one active conversation per contact: concurrent first messages cannot open two.
        Index(
            "uq_conversations_active_contact",
            "contact_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        Index("ix_conversations_account_channel_last", "account_id", "channel", "last_message_at"),
        # The reply queue on PostgreSQL: conversations whose reply task is due (jobs/queue.py).
        Index(
            "ix_conversations_reply_due",
            "reply_due_at",
            sqlite_where=text("reply_due_at IS NOT NULL"),
            postgresql_where=text("reply_due_at IS NOT NULL"),
        ),
        # The parked ones, counted at each /metrics scrape (a few, in a large table).
        Index(
            "ix_conversations_parked",
            "parked_at",
            sqlite_where=text("parked_at IS NOT NULL"),
            postgresql_where=text("parked_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[Channel] = mapped_column(String(16))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    # The contact's address, copied here so listings need no join.
    contact_address: Mapped[str] = mapped_column(String(64))
    status: Mapped[ConversationStatus] = mapped_column(
        String(16), default=ConversationStatus.active
    )
    ai_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # While set and in the future, an operator has the conversation and the AI stays quiet.
    handoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A worker's lease on the conversation while it answers it (see jobs/locks.py).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # On PostgreSQL, when the conversation's reply task should next run (None: nothing to do
    # that no worker has claimed yet; see jobs/queue.py).
    reply_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the channel's daily token budget was spent, the busy message this conversation got.
    busy_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reply tasks that crashed on this conversation in a row; past a few it is parked: no task
    # runs on it until an operator retries it, and `parked_error` says why (jobs/runner.py).
    crash_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    parked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    parked_error: Mapped[str | None] = mapped_column(Text)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_created", "conversation_id", "id"),
        # One reply per inbound message: a second worker cannot store another.
        Index(
            "uq_messages_reply_part",
            "reply_to_id",
            "part",
            unique=True,
            sqlite_where=text("direction = 'outbound'"),
            postgresql_where=text("direction = 'outbound'"),
        ),
        Index(
            "ix_messages_reply_pending",
            "reply_state",
            sqlite_where=text("reply_state = 'pending'"),
            postgresql_where=text("reply_state = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    channel: Mapped[Channel] = mapped_column(String(16))
    direction: Mapped[Direction] = mapped_column(String(16))
    author: Mapped[Author] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text, default="")
    twilio_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[MessageStatus] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    # Outbound: the inbound message this answers, and its place among the parts of a split reply.
    # Indexed so that deleting old messages (ON DELETE SET NULL here) does not scan the table.
    reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    part: Mapped[int] = mapped_column(Integer, default=0)
    # Inbound: where the message stands in the reply pipeline.
    reply_state: Mapped[ReplyState | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Why an inbound message was not answered by the AI, or what went wrong on the way.
    note: Mapped[str | None] = mapped_column(Text)
    segments: Mapped[int | None] = mapped_column(Integer)
    encoding: Mapped[str | None] = mapped_column(String(8))
    model: Mapped[str | None] = mapped_column(String(100))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    # Written in the dashboard's phone simulator (inbound), or answering such a message
    # (outbound): never sent to a real phone.
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Outbound, sent as an approved template: its Twilio ContentSid (HX…) and the values of its
    # variables; `body` then holds the template's text with them filled in.
    content_sid: Mapped[str | None] = mapped_column(String(64))
    content_variables: Mapped[dict[str, str] | None] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Its media items, in order: loaded only when asked for (selectinload), never by accident.
    media: Mapped[list[MessageMedia]] = relationship(
        order_by="MessageMedia.position", lazy="raise", passive_deletes=True
    )


class MessageMedia(Base):
    """An item attached to an inbound message (a voice note, an image, a document, a location):
    stored by the webhook as `pending`, fetched and understood by the reply task (media/)."""

    __tablename__ = "media"
    __table_args__ = (
        UniqueConstraint("message_id", "position"),
        # What the reply task still has to read: looked up for every batch it answers.
        Index(
            "ix_media_unread",
            "message_id",
            sqlite_where=text("state IN ('pending', 'fetched')"),
            postgresql_where=text("state IN ('pending', 'fetched')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # Its place among the message's items (Twilio's MediaUrl{N}).
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[MediaKind] = mapped_column(String(16))
    content_type: Mapped[str] = mapped_column(String(128), default="")
    # Twilio's URL (None for a location).
    url: Mapped[str | None] = mapped_column(Text)
    state: Mapped[MediaState] = mapped_column(String(16))
    # Fetches tried so far (counted before each, so a crash mid-fetch counts).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # The bytes as fetched, kept for the model (images) and for operators; removed with the
    # message.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # What was understood: a transcript, a document's text, a location's description.
    text: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    # When Twilio's copy was deleted (channel_configs.delete_media_after_use).
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Template(Base):
    """A message template the account may send (Twilio's Content API): synced from Twilio, or
    added by hand."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("account_id", "sid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # Twilio's ContentSid, HX followed by 32 hex digits.
    sid: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(16), default="")
    # The text, with its variables as {{1}}, {{2}}… (or {{name}}).
    body: Mapped[str] = mapped_column(Text, default="")
    # Its variables and their sample values, as Twilio keeps them: {"1": "Ana", ...}.
    variables: Mapped[dict[str, str]] = mapped_column(JsonDoc, default=dict)
    approval: Mapped[TemplateApproval] = mapped_column(String(32))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    # "twilio" (synced) or "manual" (added by hand; a sync leaves it alone).
    source: Mapped[str] = mapped_column(String(16), default="twilio")
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Broadcast(Base):
    """One message (free text or a template) to a list of recipients, sent in the background at
    the channel's `broadcast_mps` (outreach/broadcaster.py)."""

    __tablename__ = "broadcasts"
    __table_args__ = (
        # The broadcasts still sending: what the broadcaster looks at on every tick.
        Index(
            "ix_broadcasts_sending",
            "account_id",
            "channel",
            "id",
            sqlite_where=text("status = 'sending'"),
            postgresql_where=text("status = 'sending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[Channel] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    # The template's ContentSid, copied (the template may be synced away meanwhile); None for
    # free text.
    content_sid: Mapped[str | None] = mapped_column(String(64))
    # The free text, or the template's text with its {{variables}}.
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[BroadcastStatus] = mapped_column(String(16), default=BroadcastStatus.sending)
    total: Mapped[int] = mapped_column(Integer, default=0)
    # The pace clock: when the last recipient handed over would have gone at exactly
    # broadcast_mps (ratelimit.Pace).
    paced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BroadcastRecipient(Base):
    __tablename__ = "broadcast_recipients"
    __table_args__ = (
        # Progress by state; the latest handed over, newest first (outreach/broadcaster.py).
        Index("ix_broadcast_recipients_broadcast_state", "broadcast_id", "state", "id"),
        # The next ones to hand over, in the order given.
        Index(
            "ix_broadcast_recipients_queued",
            "broadcast_id",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # E.164, as given (normalised); kept even when invalid, to say why it was skipped.
    address: Mapped[str] = mapped_column(String(64))
    # The template's variables for this recipient.
    variables: Mapped[dict[str, str] | None] = mapped_column(JsonDoc)
    state: Mapped[RecipientState] = mapped_column(String(16), default=RecipientState.queued)
    # Why it was skipped.
    reason: Mapped[str | None] = mapped_column(Text)
    # The message it was handed over as (its status says how far it got).
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    handed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A proactive message's Idempotency-Key: the same key (per account) never sends twice."""

    __tablename__ = "idempotency_keys"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of the request it came with: the same key with another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class WebhookLog(Base):
    """Every webhook request, accepted or refused, with why."""

    __tablename__ = "webhook_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL")
    )
    message_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_token: Mapped[str | None] = mapped_column(String(128))
    status_code: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    signature_valid: Mapped[bool | None] = mapped_column(Boolean)
    # The form fields as received (for replay), or None when they could not be parsed.
    params: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)


class DashboardSession(Base):
    """A dashboard login. The cookie carries a random session id and this row its SHA-256
    hash; the session lasts while the row does: logging out deletes it (a copied cookie then
    stops working), and so does its expiry."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # An API key's account; None for the admin (every account).
    account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # "api_key", "admin", "link" (a session a login link opened); "login_link": the link itself
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
