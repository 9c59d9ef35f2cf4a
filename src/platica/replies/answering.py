"""Answering: ask the LLM (retrying what is transient, pacing what the provider asks), shape
the answer for the channel, and store it with its first part marked `sending`, durably."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from platica.errors import RetryableError
from platica.jobs.locks import Lease
from platica.jobs.queue import RENEW_AND_TOUCH
from platica.logging import get_logger
from platica.metrics import REPLIES
from platica.models import (
    Author,
    Channel,
    ChannelConfig,
    MessageStatus,
    ReplyState,
    utcnow,
)
from platica.replies import outbox, store
from platica.replies.context import AGAIN, Again, ReplyContext
from platica.replies.deciding import Prepared
from platica.replies.generator import (
    GeneratedReply,
    GenerationFailed,
    RateLimited,
)
from platica.replies.sending import send_parts
from platica.replies.shaping import SmsText, shape_sms, shape_whatsapp
from platica.replies.store import Inbound, Loaded, Outbound
from platica.texts import text_for

log = get_logger(__name__)

# --- Answering -----------------------------------------------------------------------------


class _Conflict(Exception):
    """Another worker stored this reply first."""


async def answer_batch(
    ctx: ReplyContext,
    lease: Lease,
    loaded: Loaded,
    batch: Sequence[Inbound],
    prepared: Prepared,
) -> float | Again | None:
    conversation = loaded.conversation
    reply, failure = await _generate(ctx, prepared)
    parts = _shape(loaded.config, reply.text) if reply else []
    if not parts:
        # No answer, or one that was all formatting and nothing to say: the fallback instead.
        reply, failure = None, failure or "the LLM's answer was empty once formatted"
        parts = _shape(loaded.config, text_for(loaded.config, "fallback_message"))

    answered = prepared.batch_ids[-1]
    simulated = any(m.simulated for m in batch)
    now = utcnow()
    outbound: list[Outbound] = []
    try:
        # Durable: the first part goes to Twilio as soon as this commits (see db/tx.py).
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
                message_id = await outbox.insert_reply_part(connection, values)
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
    return await send_parts(ctx, lease, loaded, outbound)


class Paced(Exception):
    """The LLM provider rate-limits us: the batch waits `wait` seconds, still pending."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


async def _generate(
    ctx: ReplyContext, prepared: Prepared
) -> tuple[GeneratedReply | None, str | None]:
    """The LLM's reply, retrying transient failures; (None, why) when the fallback is due.
    Raises Paced when the provider rate-limits us: a 429 paces the reply, it does not drop it."""
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
            wait = await _provider_wait(ctx, prepared, attempt, error)
            if wait is not None:
                raise Paced(wait) from error
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


async def _provider_wait(
    ctx: ReplyContext, prepared: Prepared, attempt: int, error: RateLimited
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
