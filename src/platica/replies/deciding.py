"""Deciding what a batch of pending messages gets, before any LLM is asked: keywords
(STOP/START/HELP) in the conversation's order, a handoff, an opt-out, a spent budget, the
debounce, the pacing limits; and writing what that decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from platica.db import Tx
from platica.jobs.locks import Lease
from platica.jobs.queue import RELEASE_WHEN_IDLE
from platica.logging import get_logger
from platica.metrics import PACED, REPLIES
from platica.models import (
    Author,
    Channel,
    ChannelConfig,
    ConversationStatus,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.replies import outbox, prompts, store
from platica.replies.context import ReplyContext
from platica.replies.generator import (
    ReplyRequest,
)
from platica.replies.keywords import Keyword, detect_keyword, keyword_word
from platica.replies.store import Inbound, Loaded
from platica.texts import text_for

log = get_logger(__name__)

# The notes a keyword message is settled with: answered with its confirmation, or not answered.
KEYWORD_CONFIRMED = {
    Keyword.opt_out: "opted out, confirmation sent",
    Keyword.opt_in: "opted in again, confirmation sent",
    Keyword.help: "help message sent",
}
KEYWORD_UNCONFIRMED = {
    Keyword.opt_out: "opted out already",
    Keyword.opt_in: "not opted out, nothing to confirm",
    Keyword.help: "contact opted out, no help message sent",
}
BUSY_NOTE = "daily token budget spent: busy message sent"
AI_DISABLED = "AI disabled for this channel"
BUSY_ALREADY_NOTE = "daily token budget spent: busy message sent earlier today"


# --- Deciding ------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to do about a batch of pending messages, decided before anything is written.

    Keywords take their place in the conversation's order: a round deals either with the
    messages before the batch's first keyword (answered, or not), or with that keyword alone
    (and its confirmation, sent before anything that came after it is looked at).
    """

    # The keyword message dealt with in this round, its keyword, and the confirmation to send
    # (WhatsApp), if any.
    keyword: tuple[Inbound, Keyword, str | None] | None = None
    # The contact's new opt-out state, when the keyword changes it.
    opted_out: bool | None = None
    # Messages to answer, or to settle unanswered with `skip_reason`.
    remaining: list[Inbound] = field(default_factory=list)
    skip_reason: str | None = None
    # An operator's hold ran out: the AI takes over again.
    resume_ai: bool = False
    # An operator has the conversation: its messages wait for them (or for the AI's return).
    hold: bool = False
    # The lease was given back with the plan written (nothing left to do).
    released: bool = False

    @property
    def answering(self) -> bool:
        return bool(self.remaining) and self.skip_reason is None


def decide(loaded: Loaded, batch: Sequence[Inbound], now: datetime) -> Plan:
    """Opt-out, opt-in and help keywords before any LLM, then whether the rest is answered.

    On SMS Twilio answers these keywords itself, so nothing is sent; on WhatsApp Plática
    confirms an opt-out once and answers HELP/INFO with the account's help message.
    """
    plan = Plan()
    skip_reason, plan.resume_ai, hold = _why_not_answer(loaded, now)
    # Nothing can be sent to an opted-out contact, by an operator either: nothing to wait for.
    hold = hold and not loaded.contact.opted_out
    keyed = [(message, detect_keyword(message.body)) for message in batch]
    if hold:
        # The messages wait for the operator; keywords are honoured all the same.
        keyed = [(message, keyword) for message, keyword in keyed if keyword is not None]
        if not keyed:
            plan.hold = True
            return plan
    first = next((i for i, (_, keyword) in enumerate(keyed) if keyword is not None), None)
    if first == 0:
        message, keyword = keyed[0]
        assert keyword is not None
        plan.keyword, plan.opted_out = _keyword(loaded, message, keyword)
        return plan
    plan.remaining = [message for message, _ in keyed[:first]]
    later = [keyword for _, keyword in keyed[first:]] if first is not None else []
    if Keyword.opt_out in later:
        # The contact asked to hear nothing more before this could be answered.
        plan.skip_reason = "the contact sent STOP right after"
    elif loaded.contact.opted_out:
        plan.skip_reason = "contact opted out"
    else:
        plan.skip_reason = skip_reason
    if plan.skip_reason is not None:
        log.info("reply.skipped", conversation_id=loaded.conversation.id, reason=plan.skip_reason)
    return plan


def _keyword(
    loaded: Loaded, message: Inbound, keyword: Keyword
) -> tuple[tuple[Inbound, Keyword, str | None], bool | None]:
    """The keyword's confirmation (WhatsApp), if any, and the contact's new opt-out state if
    it changes."""
    opted_out = loaded.contact.opted_out
    confirmation: str | None = None
    changed: bool | None = None
    if keyword is Keyword.opt_out:
        if not opted_out:
            changed, confirmation = True, text_for(loaded.config, "opt_out_message")
    elif keyword is Keyword.opt_in:
        if opted_out:
            changed, confirmation = False, text_for(loaded.config, "opt_in_message")
    elif not opted_out:
        confirmation = text_for(loaded.config, "help_message")
    if loaded.conversation.channel != Channel.whatsapp:
        confirmation = None  # Twilio answers keywords on SMS
    return (message, keyword, confirmation), changed


def media_to_read(loaded: Loaded, plan: Plan, batch: Sequence[Inbound]) -> list[int]:
    """The messages whose media are read before the plan is written: those the AI answers, and
    those an operator will (a handoff, the AI off: they read the transcripts); none for a
    contact who opted out, or sent STOP right after."""
    if loaded.contact.opted_out or plan.keyword is not None:
        return []
    if plan.hold:
        waiting: Sequence[Inbound] = batch
    elif plan.remaining and plan.skip_reason in (None, AI_DISABLED):
        waiting = plan.remaining
    else:
        return []
    return [message.id for message in waiting if message.media_pending]


def _why_not_answer(loaded: Loaded, now: datetime) -> tuple[str | None, bool, bool]:
    """Why the AI must not answer, if so; whether an operator's hold has just run out; and
    whether an operator holds the conversation (its messages then wait for them)."""
    conversation = loaded.conversation
    if conversation.status != ConversationStatus.active:
        return "conversation closed", False, False
    if not loaded.config.ai_enabled:
        return AI_DISABLED, False, False
    if not conversation.ai_enabled:
        if conversation.handoff_until is not None and conversation.handoff_until <= now:
            return None, True, False
        return None, False, True
    return None, False, False


@dataclass
class Prepared:
    request: ReplyRequest
    batch_ids: list[int]
    # The LLM attempt counted with the batch read; 0 when no attempts are left.
    first_attempt: int


async def write_plan(
    ctx: ReplyContext, connection: Tx, lease: Lease, loaded: Loaded, plan: Plan
) -> Prepared | float | None:
    """Write the plan (contact, conversation, then messages); what to ask the LLM, if anything,
    or seconds to wait for a pace (the lease given back, the messages left pending)."""
    conversation = loaded.conversation
    if plan.opted_out is not None:
        await store.set_opted_out(connection, loaded.contact.id, plan.opted_out)
        loaded.contact.opted_out = plan.opted_out
    if plan.resume_ai:
        await store.resume_ai(connection, conversation.id)
        conversation.ai_enabled, conversation.handoff_until = True, None
    if plan.keyword is not None:
        await _write_keyword(connection, loaded, *plan.keyword)
        return None  # again: its confirmation goes out before anything after it
    if plan.hold:
        plan.released = await lease.release(connection)
        return None
    if plan.remaining and not plan.answering:
        await store.settle(
            connection, [m.id for m in plan.remaining], ReplyState.skipped, plan.skip_reason
        )
        plan.released = await lease.release(connection, RELEASE_WHEN_IDLE)
        return None
    now = utcnow()
    if _budget_spent(loaded.config, now):
        await _write_busy(connection, lease, loaded, plan, now)
        return None
    wait = await _pacing_wait(ctx, connection, loaded, now)
    if wait > 0:
        await lease.release(connection)
        return wait
    config = loaded.config
    batch_ids = [m.id for m in plan.remaining]
    first_attempt = max(m.attempts for m in plan.remaining) + 1
    if first_attempt <= ctx.policy.llm_attempts:
        # Counted before the call, so a crash mid-call still uses up the attempt.
        await store.count_attempt(connection, batch_ids, first_attempt)
    else:
        first_attempt = 0
    history = await store.history(
        connection,
        conversation.id,
        max(config.context_messages, 1),
        batch_ids[-1],
        pictures_of=batch_ids if config.vision else (),
    )
    request = ReplyRequest(
        model=config.openai_model or ctx.settings.OPENAI_MODEL,
        messages=prompts.build_messages(config, history),
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        language=config.language,
        offline_message=text_for(config, "offline_message"),
    )
    return Prepared(request, batch_ids, first_attempt)


async def _write_keyword(
    connection: Tx,
    loaded: Loaded,
    message: Inbound,
    keyword: Keyword,
    confirmation: str | None,
) -> None:
    """Store the keyword's confirmation, if any, as the reply to it, and settle the keyword:
    answered when confirmed, else skipped (with why)."""
    conversation = loaded.conversation
    word = keyword_word(message.body) or keyword.value
    if confirmation:
        await _store_system_reply(
            connection, conversation, confirmation, message.id, simulated=message.simulated
        )
        note = f"{word}: {KEYWORD_CONFIRMED[keyword]}"
        await store.settle(connection, [message.id], ReplyState.answered, note)
    else:
        sms = conversation.channel == Channel.sms
        note = f"{word}: {'Twilio answers it on SMS' if sms else KEYWORD_UNCONFIRMED[keyword]}"
        await store.settle(connection, [message.id], ReplyState.skipped, note)
    log.info("reply.keyword", conversation_id=conversation.id, keyword=keyword.value)


async def _store_system_reply(
    connection: Tx,
    conversation: store.ConversationState,
    body: str,
    reply_to_id: int,
    *,
    simulated: bool,
) -> None:
    """Store a fixed text of Plática's (a confirmation, the busy message) as the one-part reply
    to `reply_to_id`, to be sent in the conversation's order."""
    await outbox.insert_reply_part(
        connection,
        {
            "account_id": conversation.account_id,
            "conversation_id": conversation.id,
            "channel": conversation.channel,
            "author": Author.system,
            "body": body,
            "status": MessageStatus.pending,
            "reply_to_id": reply_to_id,
            "part": 0,
            "simulated": simulated,
        },
    )


def _budget_spent(config: ChannelConfig, now: datetime) -> bool:
    """Whether the channel's daily token budget (if any) is spent today (UTC)."""
    budget = config.daily_token_budget
    return budget is not None and config.tokens_day == now.date() and config.tokens_used >= budget


async def _write_busy(
    connection: Tx,
    lease: Lease,
    loaded: Loaded,
    plan: Plan,
    now: datetime,
) -> None:
    """The channel's daily token budget is spent: the busy message, once a day per
    conversation, instead of an LLM call; the messages after it in the day stay unanswered."""
    conversation = loaded.conversation
    batch_ids = [m.id for m in plan.remaining]
    midnight = datetime.combine(now.date(), datetime.min.time(), tzinfo=now.tzinfo)
    log.warning(
        "budget.spent",
        account_id=str(conversation.account_id),
        channel=conversation.channel.value,
        conversation_id=conversation.id,
        budget=loaded.config.daily_token_budget,
    )
    if conversation.busy_sent_at is not None and conversation.busy_sent_at >= midnight:
        await store.settle(connection, batch_ids, ReplyState.skipped, BUSY_ALREADY_NOTE)
        plan.released = await lease.release(connection, RELEASE_WHEN_IDLE)
        REPLIES.labels(conversation.channel, "skipped").inc(len(batch_ids))
        return
    await _store_system_reply(
        connection,
        conversation,
        text_for(loaded.config, "busy_message"),
        batch_ids[-1],
        simulated=any(m.simulated for m in plan.remaining),
    )
    await store.settle(connection, batch_ids, ReplyState.answered, BUSY_NOTE)
    await store.set_busy_sent(connection, conversation.id, now)
    conversation.busy_sent_at = now
    REPLIES.labels(conversation.channel, "busy").inc()
    # Again: the busy message goes out next.


async def _pacing_wait(ctx: ReplyContext, connection: Tx, loaded: Loaded, now: datetime) -> float:
    """Seconds the conversation's reply must wait for the pacing limits; 0 to answer now (then
    counted towards the account's pace)."""
    per_sender = ctx.limits.per_sender
    if per_sender is not None:
        wait = per_sender.wait_after(loaded.paced_from, now)
        if wait > 0:
            PACED.labels("sender").inc()
            log.info("reply.paced", conversation_id=loaded.conversation.id, limit="sender")
            return wait
    per_account = ctx.limits.per_account
    if per_account is not None:
        wait = await store.take_account_pace(
            connection, loaded.conversation.account_id, per_account, now
        )
        if wait > 0:
            PACED.labels("account").inc()
            log.info("reply.paced", conversation_id=loaded.conversation.id, limit="account")
            return wait
    return 0.0


def count_unanswered(channel: Channel, plan: Plan) -> None:
    """Count the messages of the batch this run decided not to have the AI answer."""
    if plan.keyword is not None:
        REPLIES.labels(channel, "keyword").inc()
    if plan.remaining and plan.skip_reason is not None:
        REPLIES.labels(channel, "skipped").inc(len(plan.remaining))


def debounce_wait(
    ctx: ReplyContext, config: ChannelConfig, batch: Sequence[Inbound]
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
