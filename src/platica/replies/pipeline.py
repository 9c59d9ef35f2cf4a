"""The reply task: answer a conversation's pending messages once, in order, whatever fails.

`reply_to_conversation` is the only task. It is safe to run any number of times, from any
number of processes: the stored messages are the source of truth, a per-conversation lease keeps
one worker at a time on a conversation, and a unique index lets only one reply exist per
inbound message. Each round:

1. takes (or renews) the lease and reads the conversation's unsent and unanswered messages, in
   one transaction;
2. delivers outbound messages stored but not yet sent (after a crash, or a Twilio outage:
   sending.py);
3. waits out the debounce window, so a burst of messages gets one answer (deciding.py);
4. handles STOP/START/HELP before anything reaches the LLM (deciding.py), and fetches and
   understands the batch's voice notes, images and documents (reading.py);
5. asks the LLM (retrying transient failures, else the fallback message), shapes the answer for
   the channel, and in one durable transaction stores it, its first part already marked
   `sending`, and marks the inbound messages answered (answering.py);
6. sends the parts in order; the transaction that stores the last SID also gives the lease back
   when nothing new arrived meanwhile, else another round runs (sending.py).

A plain reply thus costs three transactions: read (1), store (5), sent (6). See db/tx.py for
which of them must be durable, and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from platica.jobs.locks import Lease, LeaseLost
from platica.logging import get_logger
from platica.media import store as media
from platica.models import (
    utcnow,
)
from platica.replies import store
from platica.replies.answering import Paced, answer_batch
from platica.replies.context import AGAIN, Again, ReplyContext
from platica.replies.deciding import (
    Plan,
    Prepared,
    count_unanswered,
    debounce_wait,
    decide,
    media_to_read,
    write_plan,
)
from platica.replies.reading import read_media
from platica.replies.sending import deliver_unsent

log = get_logger(__name__)

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
    reply queue, see jobs/postgres.py); None when none is due. `on_claim` learns what the claim
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
            if not isinstance(outcome, Again):
                return outcome
    except LeaseLost:
        # Another worker has the conversation now; it carries on from the stored state.
        log.warning("reply.lease_lost", conversation_id=lease.conversation_id)
        return LOCK_BUSY_RETRY_SECONDS
    except Paced as paced:
        # The LLM provider asked us to slow down: the messages stay pending until then.
        log.info("reply.llm_paced", conversation_id=lease.conversation_id, wait=paced.wait)
        return paced.wait
    return 0.0


async def _round(ctx: ReplyContext, lease: Lease) -> float | Again | None:
    plan: Plan | None = None
    prepared: Prepared | float | None = None
    unread_ids: list[int] = []
    unread: list[media.Pending] = []
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
            wait = debounce_wait(ctx, loaded.config, pending)
            if wait is not None:
                await lease.release(connection)
                return wait
            plan = decide(loaded, pending, utcnow())
            # Media still to read are read first, outside this transaction (their tries
            # counted in it).
            if unread_ids := media_to_read(loaded, plan, pending):
                unread = await media.fetch_pending(connection, unread_ids)
            if not unread_ids and plan.opted_out is None:
                # Rows are locked contact, conversation, messages everywhere (so concurrent
                # transactions on PostgreSQL wait instead of deadlocking); the lease has locked
                # the conversation already, so only a plan that leaves the contact alone is
                # written here.
                prepared = await write_plan(ctx, connection, lease, loaded, plan)
    if plan is None:
        return await deliver_unsent(ctx, lease, loaded, unsent)
    if unread_ids:
        # Fetched and understood (or given up) before the batch is answered; the next round
        # decides again with what they said.
        await read_media(ctx, loaded, unread)
        return AGAIN
    if plan.opted_out is not None:
        async with ctx.transaction(durable=False) as connection:
            prepared = await write_plan(ctx, connection, lease, loaded, plan)
    count_unanswered(loaded.conversation.channel, plan)  # now that it is committed
    if isinstance(prepared, float):
        return prepared  # paced: due again then, its messages still pending
    if prepared is None:
        return None if plan.released else AGAIN
    return await answer_batch(ctx, lease, loaded, plan.remaining, prepared)
