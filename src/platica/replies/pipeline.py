"""The reply task: answer a conversation's pending messages once, in order, whatever fails.

`reply_to_conversation` is the only task. It is safe to run any number of times, from any
number of processes: the stored messages are the source of truth, a per-conversation lease keeps
one worker at a time on a conversation, and a unique index lets only one reply exist per
inbound message. Each round:

1. takes (or renews) the lease and reads the conversation's unsent and unanswered messages, in
   one transaction;
2. delivers outbound messages stored but not yet sent (after a crash, or a Twilio outage);
3. waits out the debounce window, so a burst of messages gets one answer;
4. handles STOP/START/HELP before anything reaches the LLM;
5. asks the LLM (retrying transient failures, else the fallback message), shapes the answer for
   the channel, and in one durable transaction stores it, its first part already marked
   `sending`, and marks the inbound messages answered;
6. sends the parts in order; the transaction that stores the last SID also gives the lease back
   when nothing new arrived meanwhile (else another round runs).

A plain reply thus costs three transactions: read (1), store (5), sent (6). See store.py for
which of them must be durable, and why.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from platica.channels.sender import (
    UNSUBSCRIBED,
    DryRunSender,
    MessageSender,
    OutgoingMessage,
    SendFailed,
    SentMessage,
)
from platica.config import Settings
from platica.db import Database, DriverPool, Tx
from platica.errors import RetryableError
from platica.jobs.locks import ConversationLocks, Lease, LeaseLost
from platica.jobs.queue import RELEASE_WHEN_IDLE, RENEW_AND_TOUCH
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
from platica.ratelimit import RateLimits
from platica.replies import prompts, store
from platica.replies.generator import (
    GeneratedReply,
    GenerationFailed,
    RateLimited,
    ReplyGenerator,
    ReplyRequest,
)
from platica.replies.keywords import Keyword, detect_keyword
from platica.replies.shaping import SmsText, shape_sms, shape_whatsapp
from platica.replies.store import Inbound, Loaded, Outbound

log = get_logger(__name__)

OPT_OUT_CONFIRMATION = (
    "You have been unsubscribed and will get no more messages. Reply START to resubscribe."
)
OPT_IN_CONFIRMATION = "You are subscribed again. Reply STOP to unsubscribe."
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
BUSY_ALREADY_NOTE = "daily token budget spent: busy message sent earlier today"


@dataclass
class RetryPolicy:
    """How every retry backs off: exponentially with the attempts counted so far, with jitter.

    A failure is retried within the run after a sleep of at most `max_sleep_in_run`; a longer
    wait hands the conversation back to the queue, due again when it is over.
    """

    llm_attempts: int = 3
    send_attempts_per_run: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_sleep_in_run: float = 5.0
    # A send still failing this long after the reply was stored is given up.
    send_give_up_after: timedelta = timedelta(hours=1)
    # A burst is answered at most this long after its first message, however it goes on.
    max_debounce_wait: float = 10.0
    # The LLM provider's 429s make messages wait (they do not use up attempts) until the oldest
    # of the batch has waited this long; then the fallback.
    llm_patience: timedelta = timedelta(minutes=10)

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
    # Sends the replies to simulated messages (the dashboard's simulator): never to a phone.
    dry_run: MessageSender = field(default_factory=DryRunSender)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # The public URL of /webhook/status: PUBLIC_BASE_URL (required with Twilio credentials).
    status_callback: Callable[[], str | None] = lambda: None
    # PostgreSQL: the psycopg pool the reply path's statements go through (db.open_driver_pool).
    driver_pool: DriverPool | None = None
    database: Database = field(init=False)
    # The pacing limits (RATE_LIMIT_PER_SENDER, RATE_LIMIT_PER_ACCOUNT), read from `settings`.
    limits: RateLimits = field(init=False)

    def __post_init__(self) -> None:
        self.database = Database(self.sessionmaker, self.driver_pool)
        self.limits = RateLimits(self.settings)

    def transaction(self, *, durable: bool) -> AbstractAsyncContextManager[Tx]:
        """A transaction of the reply path (db.transaction)."""
        return self.database.transaction(durable=durable)


class _Again:
    """Sentinel: something was stored; run the loop again to send it and look for more."""


AGAIN = _Again()
LOCK_BUSY_RETRY_SECONDS = 1.0
MAX_ROUNDS = 20


async def reply_to_conversation(ctx: ReplyContext, conversation_id: int) -> float | None:
    """Bring the conversation up to date; seconds until it should run again, or None when done."""
    async with ctx.locks.lease(conversation_id) as lease:
        return await _rounds(ctx, lease)


class Claimed(NamedTuple):
    conversation_id: int
    # Seconds until it should run again, or None when done.
    wait: float | None


async def reply_to_next_due(
    ctx: ReplyContext, on_claim: Callable[[int | None, bool], None] | None = None
) -> Claimed | None:
    """Claim the due conversation that has waited longest and bring it up to date (PostgreSQL's
    reply queue, see jobs/runner.py); None when none is due. `on_claim` learns what the claim
    found as soon as it is known, long before the reply is done.

    The claim, which takes the conversation's lease, is the first statement of the task's first
    transaction: claiming costs no transaction of its own.
    """
    async with ctx.locks.claim_due(on_claim) as lease:
        wait = await _rounds(ctx, lease)
        if not lease.taken:
            return None
        return Claimed(lease.conversation_id, wait)


async def _rounds(ctx: ReplyContext, lease: Lease) -> float | None:
    try:
        for _ in range(MAX_ROUNDS):
            outcome = await _round(ctx, lease)
            if lease.parked:
                return None  # its reply task kept crashing: an operator retries it
            if not isinstance(outcome, _Again):
                return outcome
    except LeaseLost:
        # Another worker has the conversation now; it carries on from the stored state.
        log.warning("reply.lease_lost", conversation_id=lease.conversation_id)
        return LOCK_BUSY_RETRY_SECONDS
    except _Paced as paced:
        # The LLM provider asked us to slow down: the messages stay pending until then.
        log.info("reply.llm_paced", conversation_id=lease.conversation_id, wait=paced.wait)
        return paced.wait
    return 0.0


async def _round(ctx: ReplyContext, lease: Lease) -> float | _Again | None:
    plan: _Plan | None = None
    prepared: _Prepared | float | None = None
    async with ctx.transaction(durable=False) as connection:
        row = await lease.take(connection)
        if row is None:
            # Busy, or (claiming) nothing was due.
            return None if lease.claims_due and not lease.taken else LOCK_BUSY_RETRY_SECONDS
        per_sender = ctx.limits.per_sender
        loaded = await store.load(
            connection,
            store.conversation_state(row),
            paced_by=per_sender.limit if per_sender else None,
        )
        if loaded is None:
            await lease.release(connection)
            return None
        unsent, pending = await store.work(connection, lease.conversation_id)
        if not unsent:
            if not pending:
                await lease.release(connection)
                return None
            wait = _debounce_wait(ctx, loaded.config, pending)
            if wait is not None:
                await lease.release(connection)
                return wait
            plan = _plan(loaded, pending, utcnow())
            if plan.opted_out is None:
                # Rows are locked contact, conversation, messages everywhere (so concurrent
                # transactions on PostgreSQL wait instead of deadlocking); the lease has locked
                # the conversation already, so only a plan that leaves the contact alone is
                # written here.
                prepared = await _write_plan(ctx, connection, lease, loaded, plan)
    if plan is None:
        return await _deliver_unsent(ctx, lease, loaded, unsent)
    if plan.opted_out is not None:
        async with ctx.transaction(durable=False) as connection:
            prepared = await _write_plan(ctx, connection, lease, loaded, plan)
    _count_unanswered(loaded.conversation.channel, plan)  # now that it is committed
    if isinstance(prepared, float):
        return prepared  # paced: due again then, its messages still pending
    if prepared is None:
        return None if plan.released else AGAIN
    return await _answer(ctx, lease, loaded, plan.remaining, prepared)


# --- Deciding ------------------------------------------------------------------------------


@dataclass
class _Plan:
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


def _plan(loaded: Loaded, batch: Sequence[Inbound], now: datetime) -> _Plan:
    """Opt-out, opt-in and help keywords before any LLM, then whether the rest is answered.

    On SMS Twilio answers these keywords itself, so nothing is sent; on WhatsApp Plática
    confirms an opt-out once and answers HELP/INFO with the account's help message.
    """
    plan = _Plan()
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
            changed, confirmation = True, OPT_OUT_CONFIRMATION
    elif keyword is Keyword.opt_in:
        if opted_out:
            changed, confirmation = False, OPT_IN_CONFIRMATION
    elif not opted_out:
        confirmation = loaded.config.help_message
    if loaded.conversation.channel != Channel.whatsapp:
        confirmation = None  # Twilio answers keywords on SMS
    return (message, keyword, confirmation), changed


def _why_not_answer(loaded: Loaded, now: datetime) -> tuple[str | None, bool, bool]:
    """Why the AI must not answer, if so; whether an operator's hold has just run out; and
    whether an operator holds the conversation (its messages then wait for them)."""
    conversation = loaded.conversation
    if conversation.status != ConversationStatus.active:
        return "conversation closed", False, False
    if not loaded.config.ai_enabled:
        return "AI disabled for this channel", False, False
    if not conversation.ai_enabled:
        if conversation.handoff_until is not None and conversation.handoff_until <= now:
            return None, True, False
        return None, False, True
    return None, False, False


@dataclass
class _Prepared:
    request: ReplyRequest
    batch_ids: list[int]
    # The LLM attempt counted with the batch read; 0 when no attempts are left.
    first_attempt: int


async def _write_plan(
    ctx: ReplyContext, connection: Tx, lease: Lease, loaded: Loaded, plan: _Plan
) -> _Prepared | float | None:
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
        connection, conversation.id, max(config.context_messages, 1), batch_ids[-1]
    )
    request = ReplyRequest(
        model=config.openai_model or ctx.settings.OPENAI_MODEL,
        messages=prompts.build_messages(config, history),
        max_tokens=config.max_tokens,
        temperature=config.temperature,
    )
    return _Prepared(request, batch_ids, first_attempt)


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
    word = message.body.strip().rstrip(".!?,;:…").upper() or keyword.value
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
    await store.insert_reply_part(
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
    plan: _Plan,
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
        loaded.config.busy_message,
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


def _count_unanswered(channel: Channel, plan: _Plan) -> None:
    """Count the messages of the batch this run decided not to have the AI answer."""
    if plan.keyword is not None:
        REPLIES.labels(channel, "keyword").inc()
    if plan.remaining and plan.skip_reason is not None:
        REPLIES.labels(channel, "skipped").inc(len(plan.remaining))


def _debounce_wait(
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


# --- Answering -----------------------------------------------------------------------------


class _Conflict(Exception):
    """Another worker stored this reply first."""


async def _answer(
    ctx: ReplyContext,
    lease: Lease,
    loaded: Loaded,
    batch: Sequence[Inbound],
    prepared: _Prepared,
) -> float | _Again | None:
    conversation = loaded.conversation
    reply, failure = await _generate(ctx, prepared)
    parts = _shape(loaded.config, reply.text) if reply else []
    if not parts:
        # No answer, or one that was all formatting and nothing to say: the fallback instead.
        reply, failure = None, failure or "the LLM's answer was empty once formatted"
        parts = _shape(loaded.config, loaded.config.fallback_message)

    answered = prepared.batch_ids[-1]
    simulated = any(m.simulated for m in batch)
    now = utcnow()
    outbound: list[Outbound] = []
    try:
        # Durable: the first part goes to Twilio as soon as this commits (see store.py).
        async with ctx.transaction(durable=True) as connection:
            await lease.renew(connection, RENEW_AND_TOUCH, at=now)
            for index, (text, sms) in enumerate(parts):
                # The first part is marked `sending` (its first attempt counted) right away; each
                # later one when the part before it is settled.
                status = MessageStatus.sending if index == 0 else MessageStatus.pending
                attempts = 1 if index == 0 else 0
                values: dict[str, object] = {
                    "account_id": conversation.account_id,
                    "conversation_id": conversation.id,
                    "channel": conversation.channel,
                    "author": Author.ai if reply else Author.system,
                    "body": text,
                    "status": status,
                    "attempts": attempts,
                    "reply_to_id": answered,
                    "part": index,
                    "simulated": simulated,
                    "created_at": now,
                    "updated_at": now,
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
                message_id = await store.insert_reply_part(connection, values)
                if message_id is None:
                    raise _Conflict
                outbound.append(
                    Outbound(
                        message_id,
                        conversation.channel,
                        text,
                        status,
                        attempts,
                        index,
                        now,
                        simulated,
                    )
                )
            await store.settle(
                connection,
                prepared.batch_ids,
                ReplyState.answered,
                f"fallback sent: {failure}" if failure else None,
            )
            if reply is not None and loaded.config.daily_token_budget is not None:
                tokens = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
                await store.add_tokens(
                    connection, conversation.account_id, conversation.channel, tokens, now.date()
                )
    except _Conflict:
        # Another worker stored this reply first: nothing to add (all rolled back).
        return AGAIN
    REPLIES.labels(conversation.channel, "ai" if reply else "fallback").inc()
    log.info(
        "reply.stored",
        conversation_id=conversation.id,
        parts=len(parts),
        answered=len(batch),
        fallback=failure is not None,
    )
    return await _send_parts(ctx, lease, loaded, outbound)


class _Paced(Exception):
    """The LLM provider rate-limits us: the batch waits `wait` seconds, still pending."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


async def _generate(
    ctx: ReplyContext, prepared: _Prepared
) -> tuple[GeneratedReply | None, str | None]:
    """The LLM's reply, retrying transient failures; (None, why) when the fallback is due.
    Raises _Paced when the provider rate-limits us: a 429 paces the reply, it does not drop it."""
    failure = "no attempts left"
    first = prepared.first_attempt
    attempts = range(first, ctx.policy.llm_attempts + 1) if first else range(0)
    for attempt in attempts:
        if attempt > first:
            # Counted before the call, so a crash mid-call still uses up the attempt (the first
            # was counted with the batch read).
            async with ctx.transaction(durable=False) as connection:
                await store.count_attempt(connection, prepared.batch_ids, attempt)
        try:
            return await ctx.generator.generate(prepared.request), None
        except RateLimited as error:
            wait = await _pace(ctx, prepared, attempt, error)
            if wait is not None:
                raise _Paced(wait) from error
            failure = f"{error.message}, for longer than we wait"
            break
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


async def _pace(
    ctx: ReplyContext, prepared: _Prepared, attempt: int, error: RateLimited
) -> float | None:
    """Seconds the batch waits for the rate-limiting provider, with its attempt given back; None
    when its oldest message has waited long enough (then the fallback is due)."""
    async with ctx.transaction(durable=False) as connection:
        oldest = await store.oldest(connection, prepared.batch_ids)
        patience = (oldest + ctx.policy.llm_patience - utcnow()).total_seconds()
        if patience <= 0:
            return None
        await store.count_attempt(connection, prepared.batch_ids, attempt - 1)
    # Jitter, so the conversations it paced do not all come back at the same instant.
    wait = error.retry_after * random.uniform(1.0, 1.25)
    return max(min(wait, patience), 0.0)


def _shape(config: ChannelConfig, text: str) -> list[tuple[str, SmsText | None]]:
    """The message parts to send, with the SMS encoding and segments where they apply."""
    if config.channel == Channel.sms:
        sms = shape_sms(text, config.sms_max_chars)
        return [(sms.text, sms)] if sms.text.strip() else []
    return [(part, None) for part in shape_whatsapp(text)]


# --- Sending -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sent:
    sid: str | None
    status: MessageStatus
    recovered: bool = False


async def _send_parts(
    ctx: ReplyContext, lease: Lease, loaded: Loaded, parts: list[Outbound]
) -> float | _Again | None:
    """Send a freshly stored reply's parts in order; the first is already marked `sending`."""
    released = False
    marked = True
    for index, message in enumerate(parts):
        result = await _deliver(ctx, lease, loaded, message, marked=marked)
        if isinstance(result, float):
            return result
        after = parts[index + 1] if index + 1 < len(parts) else None
        try:
            # Durable when it marks the next part `sending`: Twilio is called next (store.py).
            async with ctx.transaction(durable=after is not None) as connection:
                if after is not None:
                    await lease.renew(connection)
                if result is not None:
                    await store.store_sent(connection, message.id, result.sid, result.status)
                if after is not None:
                    after.attempts += 1
                    await store.mark_sending(connection, after)
                else:
                    released = await lease.release(connection, RELEASE_WHEN_IDLE)
        except store.SidTaken:
            return _sid_taken(message, result)
        if after is not None:
            after.status = MessageStatus.sending
        if result is not None:
            _log_sent(message, result)
    return None if released else AGAIN


async def _deliver_unsent(
    ctx: ReplyContext, lease: Lease, loaded: Loaded, unsent: Sequence[Outbound]
) -> float | _Again | None:
    """Send every stored, unsent outbound message in order; a wait if Twilio is failing."""
    for message in unsent:
        result = await _deliver(ctx, lease, loaded, message, marked=False)
        if isinstance(result, float):
            return result
        if result is not None:
            try:
                async with ctx.transaction(durable=False) as connection:
                    await store.store_sent(connection, message.id, result.sid, result.status)
            except store.SidTaken:
                return _sid_taken(message, result)
            _log_sent(message, result)
    return AGAIN


def _sid_taken(message: Outbound, result: _Sent | None) -> _Again:
    """Another message stored the SID first: what was found was not this message after all (it
    stays `sending`; the next look leaves that SID out)."""
    log.warning(
        "reply.sid_taken", message_id=message.id, sid=result.sid if result is not None else None
    )
    return AGAIN


def _log_sent(message: Outbound, result: _Sent) -> None:
    if result.status == MessageStatus.dry_run:
        # Stored, deliberately not sent: Twilio is not configured, or it answers the simulator.
        log.info(
            "reply.dry_run",
            message_id=message.id,
            part=message.part,
            channel=message.channel.value,
            chars=len(message.body),
        )
    elif result.recovered:
        log.info("reply.recovered", message_id=message.id, sid=result.sid)
    else:
        log.info("reply.sent", message_id=message.id, sid=result.sid, part=message.part)


async def _deliver(
    ctx: ReplyContext, lease: Lease, loaded: Loaded, message: Outbound, *, marked: bool
) -> _Sent | float | None:
    """Send `message` once: what Twilio answered (for the caller to store), a wait if Twilio
    keeps failing, or None when it failed for good (recorded here).

    `marked`: the message was just marked `sending` for this attempt, and never sent before.
    """
    outgoing = OutgoingMessage(
        channel=Channel(message.channel),
        to=loaded.contact.address,
        from_=loaded.config.phone_number,
        body=message.body,
        status_callback=ctx.status_callback(),
    )
    # A reply to the dashboard's simulator never reaches a real phone.
    sender = ctx.dry_run if message.simulated else ctx.sender
    for _ in range(ctx.policy.send_attempts_per_run):
        if not marked:
            if message.status == MessageStatus.sending:
                # An earlier attempt may have reached Twilio before it was cut off: ask first.
                try:
                    found = await _find_landed(ctx, sender, outgoing, message)
                except RetryableError as error:
                    # Asking is an attempt too: its failures back off like a send's.
                    message.attempts += 1
                    return await _send_failed_transiently(ctx, message, error)
                if found is not None:
                    return _Sent(found.sid, found.status, recovered=True)
            message.attempts += 1
            # Durable, and only while the lease is still ours: Twilio is called next.
            async with ctx.transaction(durable=True) as connection:
                await lease.renew(connection)
                await store.mark_sending(connection, message)
            message.status = MessageStatus.sending
        marked = False
        try:
            sent = await sender.send(outgoing)
        except RetryableError as error:
            if not error.ambiguous:
                message.status = MessageStatus.pending
            wait = await _send_failed_transiently(ctx, message, error)
            if wait is None or wait > ctx.policy.max_sleep_in_run:
                return wait
            await asyncio.sleep(wait)
            continue
        except SendFailed as error:
            async with ctx.transaction(durable=True) as connection:
                if error.code == UNSUBSCRIBED:
                    await store.set_opted_out(connection, loaded.contact.id, True)
                await store.record_error(
                    connection,
                    message.id,
                    MessageStatus.failed,
                    error.message[:500],
                    code=error.code,
                )
            log.warning("reply.send_failed", message_id=message.id, error_code=error.code)
            REPLIES.labels(message.channel, "send_failed").inc()
            return None
        return _Sent(sent.sid, sent.status)
    return ctx.policy.backoff(message.attempts)


async def _find_landed(
    ctx: ReplyContext, sender: MessageSender, outgoing: OutgoingMessage, message: Outbound
) -> SentMessage | None:
    """What Twilio made of the message's interrupted attempt, if it landed: a message like it,
    created since the attempt began, whose SID no message of ours has (the same text may have
    gone to the same contact moments before: a fallback, a HELP answer)."""
    since = message.sending_since or message.created_at
    candidates = [c for c in await sender.find_sent(outgoing, since=since) if c.sid]
    if not candidates:
        return None
    async with ctx.transaction(durable=False) as connection:
        stored = await store.stored_sids(connection, [c.sid for c in candidates if c.sid])
    return next((c for c in candidates if c.sid not in stored), None)


async def _send_failed_transiently(
    ctx: ReplyContext, message: Outbound, error: RetryableError
) -> float | None:
    """Record a transient failure; give up for good once the reply is too old to matter."""
    log.warning(
        "reply.send_retry", message_id=message.id, attempts=message.attempts, error=error.message
    )
    if utcnow() - message.created_at > ctx.policy.send_give_up_after:
        async with ctx.transaction(durable=True) as connection:
            await store.record_error(
                connection, message.id, MessageStatus.failed, f"gave up: {error.message}"
            )
        REPLIES.labels(message.channel, "send_failed").inc()
        return None
    async with ctx.transaction(durable=True) as connection:
        await store.record_error(
            connection, message.id, message.status, error.message, attempts=message.attempts
        )
    return ctx.policy.backoff(message.attempts)
