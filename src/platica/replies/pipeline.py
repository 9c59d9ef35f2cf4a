"""The reply task: answer a conversation's pending messages once, in order, whatever fails.

`reply_to_conversation` is the only task. It is safe to run any number of times, from any
number of processes: the stored messages are the source of truth, a per-conversation lock keeps
one worker at a time on a conversation, and a unique index lets only one reply exist per
inbound message. Each run:

1. delivers outbound messages stored but not yet sent (after a crash, or a Twilio outage);
2. waits out the debounce window, so a burst of messages gets one answer;
3. handles STOP/START/HELP before anything reaches the LLM;
4. asks the LLM (retrying transient failures, else the fallback message), shapes the answer for
   the channel, stores it as pending outbound messages and marks the inbound ones answered, in
   one transaction;
5. sends the parts in order, storing each Twilio SID as it comes back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.channels.sender import UNSUBSCRIBED, MessageSender, OutgoingMessage, SendFailed
from platica.config import Settings
from platica.conversations import repository, service
from platica.db import transaction
from platica.errors import RetryableError
from platica.jobs.locks import ConversationLocks
from platica.logging import get_logger
from platica.metrics import REPLIES
from platica.models import (
    Author,
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.replies import prompts
from platica.replies.generator import GeneratedReply, GenerationFailed, ReplyGenerator, ReplyRequest
from platica.replies.keywords import Keyword, detect_keyword
from platica.replies.shaping import SmsText, shape_sms, shape_whatsapp

log = get_logger(__name__)

OPT_OUT_CONFIRMATION = (
    "You have been unsubscribed and will get no more messages. Reply START to resubscribe."
)
OPT_IN_CONFIRMATION = "You are subscribed again. Reply STOP to unsubscribe."


@dataclass
class RetryPolicy:
    llm_attempts: int = 3
    send_attempts_per_run: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    # A send still failing this long after the reply was stored is given up.
    send_give_up_after: timedelta = timedelta(hours=1)
    # A burst is answered at most this long after its first message, however it goes on.
    max_debounce_wait: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Exponential, with jitter so a crowd of retries does not arrive together."""
        delay: float = min(self.backoff_base * 2 ** max(attempt - 1, 0), self.backoff_max)
        return delay * random.uniform(0.75, 1.0)


@dataclass
class ReplyContext:
    """Everything the reply task needs, built once per process."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    generator: ReplyGenerator
    sender: MessageSender
    locks: ConversationLocks
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # The public URL of /webhook/status, when known (PUBLIC_BASE_URL, else the last webhook's).
    status_callback: Callable[[], str | None] = lambda: None


@dataclass
class _Loaded:
    conversation: Conversation
    config: ChannelConfig
    contact: Contact


class _Again:
    """Sentinel: something was stored; run the loop again to send it and look for more."""


AGAIN = _Again()
LOCK_BUSY_RETRY_SECONDS = 1.0
MAX_ROUNDS = 20


async def reply_to_conversation(ctx: ReplyContext, conversation_id: int) -> float | None:
    """Bring the conversation up to date; seconds until it should run again, or None when done."""
    async with ctx.locks.hold(conversation_id) as taken:
        if not taken:
            return LOCK_BUSY_RETRY_SECONDS
        for _ in range(MAX_ROUNDS):
            wait = await _deliver_unsent(ctx, conversation_id)
            if wait is not None:
                return wait
            outcome = await _answer_pending(ctx, conversation_id)
            if outcome is None or isinstance(outcome, float):
                return outcome
        return 0.0


async def _load(session: AsyncSession, conversation_id: int) -> _Loaded | None:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        return None
    config = await session.scalar(
        select(ChannelConfig).where(
            ChannelConfig.account_id == conversation.account_id,
            ChannelConfig.channel == conversation.channel,
        )
    )
    contact = await session.get(Contact, conversation.contact_id)
    if config is None or contact is None:
        return None
    return _Loaded(conversation, config, contact)


# --- 1. Delivery -------------------------------------------------------------------------


async def _deliver_unsent(ctx: ReplyContext, conversation_id: int) -> float | None:
    """Send every stored, unsent outbound message in order; a wait if Twilio is failing."""
    async with transaction(ctx.sessionmaker) as session:
        loaded = await _load(session, conversation_id)
        unsent = list(
            await session.scalars(
                select(Message)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.direction == Direction.outbound,
                    Message.status.in_([MessageStatus.pending, MessageStatus.sending]),
                )
                .order_by(Message.id)
            )
        )
    if not unsent or loaded is None:
        return None
    for message in unsent:
        wait = await _deliver(ctx, loaded, message)
        if wait is not None:
            return wait
    return None


async def _deliver(ctx: ReplyContext, loaded: _Loaded, message: Message) -> float | None:
    outgoing = OutgoingMessage(
        channel=Channel(message.channel),
        to=loaded.contact.address,
        from_=loaded.config.phone_number,
        body=message.body,
        status_callback=ctx.status_callback(),
    )
    for _ in range(ctx.policy.send_attempts_per_run):
        if message.status == MessageStatus.sending:
            # An earlier attempt may have reached Twilio before it was cut off: ask first.
            try:
                found = await ctx.sender.find_sent(outgoing, since=message.created_at)
            except RetryableError as error:
                return await _send_failed_transiently(ctx, message, error)
            if found is not None:
                await _store_sent(ctx, message, found.sid, found.status)
                log.info("reply.recovered", message_id=message.id, sid=found.sid)
                return None
        message.attempts += 1
        await _set(ctx, message, status=MessageStatus.sending, attempts=message.attempts)
        message.status = MessageStatus.sending
        try:
            sent = await ctx.sender.send(outgoing)
        except RetryableError as error:
            if not error.ambiguous:
                message.status = MessageStatus.pending
            wait = await _send_failed_transiently(ctx, message, error)
            if wait is None or wait > ctx.policy.backoff_max:
                return wait
            await asyncio.sleep(wait)
            continue
        except SendFailed as error:
            await _set(
                ctx,
                message,
                status=MessageStatus.failed,
                error_code=error.code,
                error_message=error.message[:500],
            )
            log.warning("reply.send_failed", message_id=message.id, error_code=error.code)
            REPLIES.labels(message.channel, "send_failed").inc()
            if error.code == UNSUBSCRIBED:
                await _set_opted_out(ctx, loaded.contact.id, True)
            return None
        await _store_sent(ctx, message, sent.sid, sent.status)
        log.info("reply.sent", message_id=message.id, sid=sent.sid, part=message.part)
        return None
    return ctx.policy.backoff(message.attempts)


async def _send_failed_transiently(
    ctx: ReplyContext, message: Message, error: RetryableError
) -> float | None:
    """Record a transient failure; give up for good once the reply is too old to matter."""
    log.warning(
        "reply.send_retry", message_id=message.id, attempts=message.attempts, error=error.message
    )
    if utcnow() - message.created_at > ctx.policy.send_give_up_after:
        await _set(
            ctx, message, status=MessageStatus.failed, error_message=f"gave up: {error.message}"
        )
        REPLIES.labels(message.channel, "send_failed").inc()
        return None
    await _set(ctx, message, status=message.status, error_message=error.message)
    return ctx.policy.backoff(message.attempts)


async def _store_sent(
    ctx: ReplyContext, message: Message, sid: str | None, status: MessageStatus
) -> None:
    async with transaction(ctx.sessionmaker) as session:
        await session.execute(
            update(Message)
            .where(Message.id == message.id)
            .values(twilio_sid=sid, status=status, error_message=None, updated_at=utcnow())
        )
        if sid is not None:
            # A status callback may have raced ahead of this write; apply it now.
            await service.replay_early_statuses(session, sid)


async def _set(ctx: ReplyContext, message: Message, **values: object) -> None:
    async with transaction(ctx.sessionmaker) as session:
        await session.execute(
            update(Message).where(Message.id == message.id).values(updated_at=utcnow(), **values)
        )


async def _set_opted_out(ctx: ReplyContext, contact_id: int, opted_out: bool) -> None:
    async with transaction(ctx.sessionmaker) as session:
        await session.execute(
            update(Contact)
            .where(Contact.id == contact_id)
            .values(opted_out=opted_out, opted_out_at=utcnow() if opted_out else None)
        )


# --- 2-4. Answering ----------------------------------------------------------------------


async def _answer_pending(ctx: ReplyContext, conversation_id: int) -> float | _Again | None:
    async with transaction(ctx.sessionmaker) as session:
        loaded = await _load(session, conversation_id)
        if loaded is None:
            return None
        batch = list(
            await session.scalars(
                select(Message)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.direction == Direction.inbound,
                    Message.reply_state == ReplyState.pending,
                )
                .order_by(Message.id)
            )
        )
        if not batch:
            return None
        wait = _debounce_wait(ctx, loaded.config, batch)
        if wait is not None:
            return wait
        remaining = await _handle_keywords(session, loaded, batch)
        reason = _why_not_answer(loaded, utcnow()) if remaining else None
        if reason is not None:
            _mark(remaining, ReplyState.skipped, reason)
            log.info("reply.skipped", conversation_id=conversation_id, reason=reason)
        answering = bool(remaining) and reason is None
        if answering:
            history = await _history(session, loaded)
            request = ReplyRequest(
                model=loaded.config.openai_model or ctx.settings.OPENAI_MODEL,
                messages=prompts.build_messages(loaded.config, history),
                max_tokens=loaded.config.max_tokens,
                temperature=loaded.config.temperature,
            )
            batch_ids = [m.id for m in remaining]
            attempts_so_far = max(m.attempts for m in remaining)
    _count_unanswered(loaded.conversation.channel, batch)  # now that it is committed
    if not answering:
        return AGAIN

    reply, failure = await _generate(ctx, batch_ids, request, attempts_so_far)
    parts = _shape(loaded.config, reply.text) if reply else []
    if not parts:
        # No answer, or one that was all formatting and nothing to say: the fallback instead.
        reply, failure = None, failure or "the LLM's answer was empty once formatted"
        parts = _shape(loaded.config, loaded.config.fallback_message)

    async with transaction(ctx.sessionmaker) as session:
        answered = batch_ids[-1]
        for index, (text, sms) in enumerate(parts):
            values: dict[str, object] = {
                "account_id": loaded.conversation.account_id,
                "conversation_id": conversation_id,
                "channel": loaded.conversation.channel,
                "direction": Direction.outbound,
                "author": Author.ai if reply else Author.system,
                "body": text,
                "media": [],
                "status": MessageStatus.pending,
                "reply_to_id": answered,
                "part": index,
            }
            if sms is not None:
                values.update(encoding=sms.encoding, segments=sms.segments)
            if reply is not None and index == 0:
                values.update(
                    model=reply.model,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    latency_ms=reply.latency_ms,
                )
            if await repository.insert_reply_part(session, values) is None:
                # Another worker stored this reply first: nothing to add.
                await session.rollback()
                return AGAIN
        await session.execute(
            update(Message)
            .where(Message.id.in_(batch_ids), Message.reply_state == ReplyState.pending)
            .values(
                reply_state=ReplyState.answered,
                note=f"fallback sent: {failure}" if failure else None,
                updated_at=utcnow(),
            )
        )
        await repository.touch_conversation(session, conversation_id, utcnow())
    REPLIES.labels(loaded.conversation.channel, "ai" if reply else "fallback").inc()
    log.info(
        "reply.stored",
        conversation_id=conversation_id,
        parts=len(parts),
        answered=len(batch_ids),
        fallback=failure is not None,
    )
    return AGAIN


def _count_unanswered(channel: Channel, batch: Sequence[Message]) -> None:
    """Count the messages of `batch` this run decided not to have the AI answer."""
    for message in batch:
        if message.reply_state == ReplyState.skipped:
            keyword = (message.note or "").startswith("keyword:")
            REPLIES.labels(channel, "keyword" if keyword else "skipped").inc()


def _debounce_wait(
    ctx: ReplyContext, config: ChannelConfig, batch: Sequence[Message]
) -> float | None:
    """Seconds to wait for the burst to end, or None to answer now."""
    window = max(config.debounce_seconds, 0.0)
    if window == 0:
        return None
    now = utcnow()
    due = min(
        batch[-1].created_at + timedelta(seconds=window),
        batch[0].created_at + timedelta(seconds=max(window, ctx.policy.max_debounce_wait)),
    )
    if now >= due:
        return None
    return (due - now).total_seconds()


def _why_not_answer(loaded: _Loaded, now: datetime) -> str | None:
    conversation = loaded.conversation
    if loaded.contact.opted_out:
        return "contact opted out"
    if conversation.status != ConversationStatus.active:
        return "conversation closed"
    if not loaded.config.ai_enabled:
        return "AI disabled for this channel"
    if not conversation.ai_enabled:
        if conversation.handoff_until is not None and conversation.handoff_until <= now:
            # The operator's hold has run out: the AI takes over again.
            conversation.ai_enabled = True
            conversation.handoff_until = None
            return None
        return "AI paused: an operator has the conversation"
    return None


def _mark(messages: Sequence[Message], state: ReplyState, note: str | None) -> None:
    for message in messages:
        message.reply_state = state
        message.note = note
        message.updated_at = utcnow()


async def _handle_keywords(
    session: AsyncSession, loaded: _Loaded, batch: Sequence[Message]
) -> list[Message]:
    """Opt-out, opt-in and help keywords, before any LLM; returns the messages left to answer.

    On SMS Twilio answers these keywords itself, so nothing is sent; on WhatsApp Plática
    confirms an opt-out once and answers HELP/INFO with the account's help message.
    """
    contact, config = loaded.contact, loaded.config
    whatsapp = loaded.conversation.channel == Channel.whatsapp
    remaining: list[Message] = []
    for message in batch:
        keyword = detect_keyword(message.body)
        if keyword is None:
            remaining.append(message)
            continue
        confirmation: str | None = None
        if keyword is Keyword.opt_out:
            if not contact.opted_out:
                contact.opted_out, contact.opted_out_at = True, utcnow()
                confirmation = OPT_OUT_CONFIRMATION
        elif keyword is Keyword.opt_in:
            if contact.opted_out:
                contact.opted_out, contact.opted_out_at = False, None
                confirmation = OPT_IN_CONFIRMATION
        elif not contact.opted_out:
            confirmation = config.help_message
        _mark([message], ReplyState.skipped, f"keyword: {keyword.value}")
        if whatsapp and confirmation:
            await repository.insert_reply_part(
                session,
                {
                    "account_id": message.account_id,
                    "conversation_id": message.conversation_id,
                    "channel": message.channel,
                    "direction": Direction.outbound,
                    "author": Author.system,
                    "body": confirmation,
                    "media": [],
                    "status": MessageStatus.pending,
                    "reply_to_id": message.id,
                    "part": 0,
                },
            )
        log.info("reply.keyword", conversation_id=message.conversation_id, keyword=keyword.value)
    # Anything sent after an opt-out in the same burst stays unanswered.
    if contact.opted_out and remaining:
        _mark(remaining, ReplyState.skipped, "contact opted out")
        return []
    return remaining


async def _history(session: AsyncSession, loaded: _Loaded) -> list[Message]:
    """The conversation's last `context_messages` messages worth showing the model."""
    rows = await session.scalars(
        select(Message)
        .where(
            Message.conversation_id == loaded.conversation.id,
            Message.status.not_in([MessageStatus.failed, MessageStatus.undelivered]),
            (Message.reply_state.is_(None)) | (Message.reply_state != ReplyState.skipped),
        )
        .order_by(Message.id.desc())
        .limit(max(loaded.config.context_messages, 1))
    )
    return list(reversed(list(rows)))


async def _generate(
    ctx: ReplyContext, batch_ids: list[int], request: ReplyRequest, attempts_so_far: int
) -> tuple[GeneratedReply | None, str | None]:
    """The LLM's reply, retrying transient failures; (None, why) when the fallback is due."""
    failure = "no attempts left"
    for attempt in range(attempts_so_far + 1, ctx.policy.llm_attempts + 1):
        # Counted before the call, so a crash mid-call still uses up the attempt.
        async with transaction(ctx.sessionmaker) as session:
            await session.execute(
                update(Message).where(Message.id.in_(batch_ids)).values(attempts=attempt)
            )
        try:
            return await ctx.generator.generate(request), None
        except RetryableError as error:
            failure = error.message
            log.warning("reply.llm_retry", attempt=attempt, error=error.message)
            if attempt < ctx.policy.llm_attempts:
                await asyncio.sleep(ctx.policy.backoff(attempt))
        except GenerationFailed as error:
            failure = str(error)
            break
    log.warning("reply.llm_failed", error=failure)
    return None, failure


def _shape(config: ChannelConfig, text: str) -> list[tuple[str, SmsText | None]]:
    """The message parts to send, with the SMS encoding and segments where they apply."""
    if config.channel == Channel.sms:
        sms = shape_sms(text, config.sms_max_chars)
        return [(sms.text, sms)] if sms.text.strip() else []
    return [(part, None) for part in shape_whatsapp(text)]
