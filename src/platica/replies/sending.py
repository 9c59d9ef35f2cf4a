"""Sending: hand stored parts to Twilio in order, record what Twilio said, and find out whether
an attempt a crash cut short landed before trying again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from platica.channels.sender import (
    UNSUBSCRIBED,
    MessageSender,
    OutgoingMessage,
    SendFailed,
    SentMessage,
)
from platica.errors import RetryableError
from platica.jobs.locks import Lease
from platica.jobs.queue import RELEASE_WHEN_IDLE
from platica.logging import get_logger
from platica.metrics import OUTREACH, REPLIES
from platica.models import (
    Author,
    Channel,
    MessageStatus,
    utcnow,
)
from platica.outreach.window import OUTSIDE_WINDOW, OUTSIDE_WINDOW_ERROR, window_open
from platica.replies import outbox, store
from platica.replies.context import AGAIN, Again, ReplyContext
from platica.replies.store import Loaded, Outbound

log = get_logger(__name__)

OPTED_OUT_ERROR = "not sent: the contact opted out (STOP); they must write START first"

# --- Sending -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sent:
    sid: str | None
    status: MessageStatus
    recovered: bool = False


async def send_parts(
    ctx: ReplyContext, lease: Lease, loaded: Loaded, parts: list[Outbound]
) -> float | Again | None:
    """Send a freshly stored reply's parts in order; the first is already marked `sending`."""
    released = False
    marked = True
    for index, message in enumerate(parts):
        result = await _deliver(ctx, lease, loaded, message, marked=marked)
        if isinstance(result, float):
            return result
        after = parts[index + 1] if index + 1 < len(parts) else None
        try:
            # Durable when it marks the next part `sending`: Twilio is called next (db/tx.py).
            async with ctx.transaction(durable=after is not None) as connection:
                if after is not None:
                    await lease.renew(connection)
                if result is not None:
                    await outbox.store_sent(connection, message.id, result.sid, result.status)
                if after is not None:
                    after.attempts += 1
                    await outbox.mark_sending(connection, after)
                else:
                    released = await lease.release(connection, RELEASE_WHEN_IDLE)
        except outbox.SidTaken:
            return _sid_taken(message, result)
        if after is not None:
            after.status = MessageStatus.sending
        if result is not None:
            _log_sent(message, result)
    return None if released else AGAIN


async def deliver_unsent(
    ctx: ReplyContext, lease: Lease, loaded: Loaded, unsent: Sequence[Outbound]
) -> float | Again | None:
    """Send every stored, unsent outbound message in order; a wait if Twilio is failing."""
    for message in unsent:
        result = await _deliver(ctx, lease, loaded, message, marked=False)
        if isinstance(result, float):
            return result
        if result is not None:
            try:
                async with ctx.transaction(durable=False) as connection:
                    await outbox.store_sent(connection, message.id, result.sid, result.status)
            except outbox.SidTaken:
                return _sid_taken(message, result)
            _log_sent(message, result)
    return AGAIN


def _sid_taken(message: Outbound, result: _Sent | None) -> Again:
    """Another message stored the SID first: what was found was not this message after all (it
    stays `sending`; the next look leaves that SID out)."""
    log.warning(
        "reply.sid_taken", message_id=message.id, sid=result.sid if result is not None else None
    )
    return AGAIN


_STARTED = {Author.operator: "proactive", Author.broadcast: "broadcast"}


def count_started(message: Outbound, outcome: str) -> None:
    """Count a message Plática started (an operator's, a broadcast's) by how its send ended."""
    origin = _STARTED.get(message.author)
    if origin is not None and message.reply_to_id is None:
        OUTREACH.labels(message.channel.value, origin, outcome).inc()


def _log_sent(message: Outbound, result: _Sent) -> None:
    count_started(message, "sent" if result.status != MessageStatus.dry_run else "dry_run")
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
        content_sid=message.content_sid,
        content_variables=message.content_variables,
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
                await outbox.mark_sending(connection, message)
            message.status = MessageStatus.sending
        marked = False
        refused = refusal(message, loaded.contact, utcnow())
        if refused is not None:
            code, reason = refused
            async with ctx.transaction(durable=True) as connection:
                await outbox.record_error(
                    connection, message.id, MessageStatus.failed, reason, code=code
                )
            log.warning("reply.refused", message_id=message.id, error_code=code)
            REPLIES.labels(message.channel, "refused").inc()
            count_started(message, "refused")
            return None
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
                await outbox.record_error(
                    connection,
                    message.id,
                    MessageStatus.failed,
                    error.message[:500],
                    code=error.code,
                )
            log.warning("reply.send_failed", message_id=message.id, error_code=error.code)
            REPLIES.labels(message.channel, "send_failed").inc()
            count_started(message, "failed")
            return None
        return _Sent(sent.sid, sent.status)
    return ctx.policy.backoff(message.attempts)


def refusal(
    message: Outbound, contact: store.ContactState, now: datetime
) -> tuple[int, str] | None:
    """Why the message must not go to Twilio at all (a Twilio error code and the reason), or
    None: nothing Plática starts goes to an opted-out contact, and free text reaches a WhatsApp
    contact only within 24 hours of their last message."""
    if message.reply_to_id is None and contact.opted_out:
        return UNSUBSCRIBED, OPTED_OUT_ERROR
    if message.content_sid is None and not window_open(
        message.channel, contact.last_inbound_at, now
    ):
        return OUTSIDE_WINDOW, OUTSIDE_WINDOW_ERROR
    return None


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
        stored = await outbox.stored_sids(connection, [c.sid for c in candidates if c.sid])
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
            await outbox.record_error(
                connection, message.id, MessageStatus.failed, f"gave up: {error.message}"
            )
        REPLIES.labels(message.channel, "send_failed").inc()
        count_started(message, "failed")
        return None
    async with ctx.transaction(durable=True) as connection:
        await outbox.record_error(
            connection, message.id, message.status, error.message, attempts=message.attempts
        )
    return ctx.policy.backoff(message.attempts)
