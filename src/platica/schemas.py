"""The API's JSON shapes (SPEC §5): what operators read and send."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from platica import texts
from platica.config import E164, strip_channel_prefix
from platica.models import ChannelConfig

T = TypeVar("T")

ModelName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[\w.:/@+-]+$"
    ),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class ConversationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    account_id: uuid.UUID
    channel: str
    contact: str = Field(description="The contact's number (or WhatsApp id).")
    status: str = Field(description="active or closed")
    ai_enabled: bool = Field(description="False while an operator has the conversation.")
    handoff_until: datetime | None
    opted_out: bool
    created_at: datetime
    last_message_at: datetime
    closed_at: datetime | None
    last_message: str | None = None
    awaiting_reply: bool = Field(
        default=False, description="The contact's last message has not been answered yet."
    )
    flagged_at: datetime | None = Field(
        default=None,
        description="When the contact went over the flood limit (their messages past it are "
        "stored, never answered).",
    )
    flag_reason: str | None = None
    parked_at: datetime | None = Field(
        default=None,
        description="Set when its reply task kept crashing: nothing runs on the conversation "
        "until an operator retries it (POST .../retry).",
    )
    parked_error: str | None = Field(
        default=None, description="Why it was parked: the crash, phone numbers masked."
    )
    window_closes_at: datetime | None = Field(
        default=None,
        description="WhatsApp: when the 24-hour customer-service window closes (24 h after the "
        "contact's last message; in the past: closed, only a template can be sent). Null on SMS "
        "and for a contact who never wrote.",
    )


class MediaRead(BaseModel):
    """A media item of an inbound message (SPEC §7), and what was understood of it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str = Field(description="audio, image, document, location or other")
    content_type: str
    state: str = Field(description="pending, fetched, understood or failed")
    text: str | None = Field(
        description="A voice note's transcript, a document's text, a location's description."
    )
    error: str | None = Field(description="Why it could not be fetched or understood.")


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    conversation_id: int
    direction: str
    author: str = Field(description="contact, ai, operator, system or broadcast")
    body: str
    media: list[MediaRead]
    status: str = Field(
        description="Delivery state: pending, queued, sent, delivered, read, failed…"
    )
    error_code: int | None
    error_message: str | None
    twilio_sid: str | None
    reply_to_id: int | None
    part: int
    reply_state: str | None = Field(description="Inbound only: pending, answered or skipped.")
    note: str | None
    attempts: int
    segments: int | None
    encoding: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int | None
    content_sid: str | None = Field(
        default=None, description="Sent as a template: its ContentSid (body is its text)."
    )
    created_at: datetime


class HistoryRead(BaseModel):
    conversation: ConversationRead
    messages: list[MessageRead]


def _check_text(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be blank")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class ManualReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1600)]

    @field_validator("body")
    @classmethod
    def _text(cls, value: str) -> str:
        return _check_text(value) or value


class StatsRead(BaseModel):
    channel: str
    total_conversations: int
    active_conversations: int
    total_messages: int
    incoming_messages: int
    outgoing_messages: int
    avg_response_time_ms: float | None
    active_users_24h: int
    active_users_7d: int


class EngagementDay(BaseModel):
    date: date
    messages: int
    incoming_messages: int
    outgoing_messages: int
    conversations: int = Field(description="Conversations with at least one message that day.")
    replies: int = Field(description="Replies sent by the AI (or its fallback) that day.")
    avg_response_time_ms: float | None


class EngagementRead(BaseModel):
    channel: str
    days: list[EngagementDay]


class ChannelConfigRead(BaseModel):
    """A channel's config. Each fixed text (and the system prompt) is the one in use: the
    channel's own, or the built-in one in its `language`; `customized` names the channel's own."""

    model_config = ConfigDict(from_attributes=True)

    account_id: uuid.UUID
    channel: str
    phone_number: str
    system_prompt: str
    openai_model: str | None
    max_tokens: int
    temperature: float
    context_messages: int
    debounce_seconds: float
    sms_max_chars: int
    fallback_message: str
    help_message: str
    opt_out_message: str
    opt_in_message: str
    offline_message: str
    handoff_message: str
    handoff_timeout_minutes: int
    ai_enabled: bool
    daily_token_budget: int | None
    busy_message: str
    language: str
    vision: bool
    delete_media_after_use: bool
    broadcast_mps: float
    # What the budget has counted (while one is set): tokens spent on that UTC day.
    tokens_day: date | None
    tokens_used: int
    updated_at: datetime
    # The texts the channel has its own of (the others are built in, in its language).
    customized: list[str]

    @model_validator(mode="before")
    @classmethod
    def _effective_texts(cls, value: object) -> object:
        if not isinstance(value, ChannelConfig):
            return value
        read = {name: getattr(value, name) for name in cls.model_fields if name != "customized"}
        read.update({name: texts.text_for(value, name) for name in texts.TEXT_NAMES})
        read["customized"] = texts.customized(value)
        return read


FixedText = Annotated[str, StringConstraints(min_length=1, max_length=1600)]


class ChannelConfigUpdate(BaseModel):
    """Fields to change; those left out keep their value. A text (`system_prompt`, the `*_message`
    fields) set to null or "" goes back to the built-in one, in the channel's language."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "system_prompt": "Eres el asistente amable de Panadería Lola. Sé breve.",
                    "opt_out_message": "Listo, no te escribiremos más. Responde START para volver.",
                    "help_message": None,
                    "temperature": 0.4,
                    "debounce_seconds": 2,
                }
            ]
        },
    )

    # The texts: null or "" puts the built-in one (in the channel's language) back.
    system_prompt: Annotated[str, StringConstraints(min_length=1, max_length=8000)] | None = None
    openai_model: ModelName | None = None
    max_tokens: Annotated[int, Field(ge=1, le=16000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    context_messages: Annotated[int, Field(ge=1, le=100)] | None = None
    debounce_seconds: Annotated[float, Field(ge=0, le=60)] | None = None
    sms_max_chars: Annotated[int, Field(ge=20, le=1600)] | None = None
    fallback_message: FixedText | None = None
    help_message: FixedText | None = None
    opt_out_message: FixedText | None = None
    opt_in_message: FixedText | None = None
    offline_message: FixedText | None = None
    handoff_message: FixedText | None = None
    handoff_timeout_minutes: Annotated[int, Field(ge=1, le=43200)] | None = None
    ai_enabled: bool | None = None
    # LLM tokens a day; null: no budget.
    daily_token_budget: Annotated[int, Field(ge=1, le=10**12)] | None = None
    busy_message: FixedText | None = None
    # The customers' language: the built-in texts' language, and a hint for transcribing their
    # voice notes.
    language: Literal["es", "en"] | None = None
    # Images go to the model as images: only for a model that accepts them.
    vision: bool | None = None
    # Delete Twilio's copy of a media item once it has been understood.
    delete_media_after_use: bool | None = None
    # Messages per second a broadcast may send (WhatsApp: up to 80 per sender by default; a US
    # long code: 1).
    broadcast_mps: Annotated[float, Field(gt=0, le=400)] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object, info: ValidationInfo) -> object:
        # null means "the default model" for openai_model, "no budget" for
        # daily_token_budget and "the built-in text" for a text; elsewhere it is a mistake.
        if info.field_name in texts.TEXT_NAMES:
            # Blank is "the built-in text" too, stored as null.
            return None if isinstance(value, str) and not value.strip() else value
        if value is None and info.field_name not in ("openai_model", "daily_token_budget"):
            raise ValueError("must not be null")
        return value

    @field_validator(*texts.TEXT_NAMES)
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _check_text(value)


# --- Outreach: proactive messages and broadcasts (SPEC §7) -----------------------------------


def _no_nul(value: object) -> object:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Variables = dict[
    Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")],
    Annotated[str, AfterValidator(_no_nul), StringConstraints(max_length=1024)] | int | float,
]


class _Content(BaseModel):
    """What Plática is asked to send: free text (`body`), or an approved template (`template`,
    its name or ContentSid, with `variables`)."""

    model_config = ConfigDict(extra="forbid")

    body: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1600)]
        | None
    ) = None
    template: Annotated[Text, StringConstraints(min_length=1, max_length=200)] | None = None
    variables: Variables | None = Field(
        default=None, max_length=100, description='The template\'s values: {"1": "Ana"}.'
    )

    @field_validator("body")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _check_text(value)

    @model_validator(mode="after")
    def _one_content(self) -> Self:
        if (self.body is None) == (self.template is None):
            raise ValueError("give either 'body' (free text) or 'template' (with 'variables')")
        return self


class ProactiveMessage(_Content):
    """A message to a contact, who may not have written yet: free text (`body`), or an
    approved template (`template`, its name or ContentSid, with `variables`)."""

    to: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, pattern=r"^(whatsapp:)?\+[1-9]\d{6,14}$", max_length=40
        ),
    ] = Field(description="The contact's number in E.164 (+34600111222).")

    @model_validator(mode="after")
    def _variables_with_a_template(self) -> ProactiveMessage:
        if self.variables and self.template is None:
            raise ValueError("'variables' go with a 'template'")
        return self


class RecipientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    variables: Variables | None = Field(default=None, max_length=100)


class BroadcastCreate(_Content):
    """One message to many: free text (`body`) or an approved template (`template`, with the
    `variables` everyone shares and each recipient's own)."""

    name: Annotated[Text, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    recipients: list[RecipientIn | Annotated[Text, StringConstraints(max_length=64)]] = Field(
        min_length=1,
        max_length=10_000,
        description='Up to 10,000: numbers ("+34600111222") or {"to", "variables"}.',
    )


class BroadcastRead(BaseModel):
    id: int
    name: str
    channel: str
    status: str = Field(description="sending, done or canceled")
    template_sid: str | None = Field(description="The template's ContentSid; null: free text.")
    body: str
    mps: float = Field(description="The channel's broadcast_mps it is paced at.")
    total: int
    queued: int = Field(description="Not yet handed to Twilio.")
    sent: int = Field(description="Accepted by Twilio, no delivery report yet.")
    delivered: int
    read: int
    failed: int
    skipped: int = Field(description="Opted out, invalid number, repeated, outside the window.")
    canceled: int = Field(description="Never sent: the broadcast was canceled first.")
    dry_run: int = Field(description="Stored, not sent: Twilio is not configured.")
    skip_reasons: dict[str, int]
    created_at: datetime
    finished_at: datetime | None
    canceled_at: datetime | None


# -- accounts (admin token only: api/accounts.py) -------------------------------------------------


def _e164(value: str) -> str:
    number = strip_channel_prefix(value.strip())
    if not E164.match(number):
        raise ValueError(f"must be an E.164 number like +14155550100, got {value!r}")
    return number


PhoneNumber = Annotated[str, StringConstraints(max_length=40), AfterValidator(_e164)]


class AccountRead(BaseModel):
    """An account and the numbers it owns (null: the channel is not set up)."""

    id: uuid.UUID
    name: str
    created_at: datetime
    whatsapp_number: str | None
    sms_number: str | None
    retention_days: int | None


class AccountUpdate(BaseModel):
    """Fields to change; those left out keep their value. A number set to null removes the
    channel (its settings with it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "Panadería Lola", "sms_number": "+5215512345678"}],
        },
    )

    name: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
            AfterValidator(_no_nul),
        ]
        | None
    ) = None
    whatsapp_number: PhoneNumber | None = None
    sms_number: PhoneNumber | None = None

    @model_validator(mode="after")
    def _name_not_null(self) -> Self:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null: give 1 to 200 characters")
        return self


class AccountDeleted(BaseModel):
    """The deleted account, and what was deleted with it, counted."""

    id: uuid.UUID
    name: str
    deleted: dict[str, int]
