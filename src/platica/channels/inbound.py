"""Recording Twilio's webhooks. An inbound message: the message, its contact and conversation,
the webhook log entry and, on PostgreSQL, the conversation's reply due time, all in one
transaction. A status
callback: the message's status, moved forward only, and the log entry.

On PostgreSQL each is one SQL statement in autocommit (one round trip): this is the path every
message and every delivery report takes, and Twilio waits on it. On SQLite it is the ORM code of
conversations/service.py. Both lock rows in the same order as everything else (contact,
conversation, messages).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from platica.channels.parsing import InboundMessage, StatusUpdate
from platica.conversations import repository, service
from platica.db import DriverPool
from platica.deps import AppState
from platica.models import FINAL_STATUSES, WebhookLog, status_move, utcnow
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE

FLOOD_REASON = "over the sender's flood limit (RATE_LIMIT_FLOOD)"

# A first message from a new contact, arriving twice at once, can find the conversation the
# other transaction is opening; the statement then stores nothing and is run again.
ATTEMPTS = 3


@dataclass(slots=True)
class WebhookEntry:
    """What webhook_logs keeps of one request, gathered while it is handled: a plain object, as
    on PostgreSQL it goes into the webhook's statement and never through the ORM."""

    endpoint: str
    idempotency_token: str | None = None
    params: dict[str, list[str]] | None = None
    message_sid: str | None = None
    signature_valid: bool | None = None
    account_id: uuid.UUID | None = None
    status_code: int = 200
    outcome: str = ""
    reason: str | None = None

    def row(self) -> WebhookLog:
        """The entry as a webhook_logs row, for the ORM."""
        return WebhookLog(
            endpoint=self.endpoint,
            idempotency_token=self.idempotency_token,
            params=self.params,
            message_sid=self.message_sid,
            signature_valid=self.signature_valid,
            account_id=self.account_id,
            status_code=self.status_code,
            outcome=self.outcome,
            reason=self.reason,
        )


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
    # conversation's reply_due_at, see jobs/runner.py).
    queued: bool


async def record_message(
    state: AppState, inbound: InboundMessage, entry: WebhookEntry
) -> Recorded | None:
    """Store the message once and log the webhook; None when no account owns its number."""
    if state.driver_pool is not None:
        return await _record_postgresql(state.driver_pool, state, inbound, entry)
    return await _record_orm(state, inbound, entry)


def _outcome(recorded: Recorded) -> tuple[str, str | None]:
    if recorded.message_id is None:
        return "duplicate", "MessageSid already recorded"
    if recorded.flooded:
        return "flood", FLOOD_REASON
    return "accepted", None


# --- PostgreSQL: one statement ----------------------------------------------------------------
#
# Data-modifying CTEs see one snapshot and each other only through RETURNING; each runs once.
# `contact` locks the contact row first (upsert, counting the message in its flood window and
# flagging the contact when it is over), then the conversation is found or opened, touched (and
# made due for its reply, debounce included, unless the message is over the flood limit), and
# the message inserted: the lock order of conversations/service.py.
#
# Rows are looked up by comparing with a subquery's value, `contact_id = (SELECT id FROM
# contact)`, never by joining CTEs to tables: a join may be planned, while the tables are small,
# as a walk through every active conversation, and the prepared statement would keep that plan
# as they grow (the cost per webhook tripled over its first 5,000 messages).

RECORD_SQL = """
WITH cfg AS (
    SELECT account_id, debounce_seconds,
           CAST(%(now)s AS timestamptz) + make_interval(secs => debounce_seconds) AS due,
           EXISTS (SELECT 1 FROM messages WHERE twilio_sid = %(sid)s) AS dup
    FROM channel_configs
    WHERE channel = %(channel)s AND phone_number = %(recipient)s
),
contact AS (
    INSERT INTO contacts AS c (account_id, channel, address, profile_name, wa_id, opted_out,
                               last_inbound_at, created_at, rate_window_start, rate_window_count)
    SELECT account_id, %(channel)s, %(sender)s, %(profile_name)s, %(wa_id)s, false, %(now)s, %(now)s, %(now)s, 1
    FROM cfg WHERE NOT dup
    ON CONFLICT (account_id, channel, address) DO UPDATE SET
        last_inbound_at = EXCLUDED.last_inbound_at,
        profile_name = COALESCE(EXCLUDED.profile_name, c.profile_name),
        wa_id = COALESCE(EXCLUDED.wa_id, c.wa_id),
        rate_window_start = CASE WHEN c.rate_window_start > %(window_over)s
                                 THEN c.rate_window_start ELSE %(now)s END,
        rate_window_count = CASE WHEN c.rate_window_start > %(window_over)s
                                 THEN c.rate_window_count + 1 ELSE 1 END,
        flagged_at = CASE WHEN c.rate_window_start > %(window_over)s
                               AND c.rate_window_count >= %(flood_limit)s
                          THEN %(now)s ELSE c.flagged_at END,
        flag_reason = CASE WHEN c.rate_window_start > %(window_over)s
                                AND c.rate_window_count >= %(flood_limit)s
                           THEN %(flag_reason)s ELSE c.flag_reason END
    RETURNING c.id, c.account_id, c.rate_window_count > %(flood_limit)s AS limited
),
existing AS (
    SELECT id FROM conversations
    WHERE contact_id = (SELECT id FROM contact) AND status = 'active'
),
opened AS (
    INSERT INTO conversations (account_id, channel, contact_id, contact_address, status,
                               ai_enabled, created_at, last_message_at, reply_due_at)
    SELECT contact.account_id, %(channel)s, contact.id, %(sender)s, 'active', true, %(now)s, %(now)s,
           CASE WHEN NOT contact.limited THEN cfg.due END
    FROM contact, cfg WHERE NOT EXISTS (SELECT 1 FROM existing)
    ON CONFLICT (contact_id) WHERE status = 'active' DO NOTHING
    RETURNING id
),
conversation AS (
    SELECT id FROM existing UNION ALL SELECT id FROM opened
),
touched AS (
    UPDATE conversations
    SET last_message_at = GREATEST(last_message_at, %(now)s),
        reply_due_at = CASE WHEN contact.limited THEN reply_due_at
                            ELSE LEAST(COALESCE(reply_due_at, cfg.due), cfg.due) END
    FROM contact, cfg
    WHERE conversations.id IN (SELECT id FROM existing)
      AND (last_message_at < %(now)s OR NOT contact.limited)
    RETURNING conversations.id
),
message AS (
    INSERT INTO messages (account_id, conversation_id, channel, direction, author, body, media,
                          twilio_sid, status, reply_state, note, attempts, part, simulated,
                          created_at, updated_at)
    SELECT contact.account_id, conversation.id, %(channel)s, 'inbound', 'contact', %(body)s,
           CAST(%(media)s AS jsonb), %(sid)s, 'received',
           CASE WHEN contact.limited THEN 'skipped' ELSE 'pending' END,
           CASE WHEN contact.limited THEN %(limited_note)s END,
           0, 0, %(simulated)s, %(now)s, %(now)s
    FROM contact, conversation
    ON CONFLICT (twilio_sid) DO NOTHING
    RETURNING id, conversation_id, reply_state
),
verdict AS (
    SELECT message.id AS message_id, message.conversation_id,
           message.reply_state <> 'pending' AS flooded
    FROM message
),
logged AS (
    INSERT INTO webhook_logs (received_at, endpoint, account_id, message_sid, idempotency_token,
                              status_code, outcome, reason, signature_valid, params)
    SELECT %(now)s, %(endpoint)s, cfg.account_id, %(sid)s, %(token)s, 200,
           CASE WHEN verdict.message_id IS NULL THEN 'duplicate'
                WHEN verdict.flooded THEN 'flood' ELSE 'accepted' END,
           CASE WHEN verdict.message_id IS NULL THEN 'MessageSid already recorded'
                WHEN verdict.flooded THEN %(flood_reason)s END,
           %(signature_valid)s, CAST(%(params)s AS jsonb)
    FROM cfg LEFT JOIN verdict ON true
    WHERE cfg.dup OR EXISTS (SELECT 1 FROM conversation)
    RETURNING id
)
SELECT cfg.account_id, cfg.debounce_seconds, (SELECT count(*) FROM logged) AS logged,
       verdict.message_id, verdict.conversation_id, coalesce(verdict.flooded, false) AS flooded
FROM cfg LEFT JOIN verdict ON true
"""
# Whitespace collapsed: psycopg caches its parse of statements up to 4 KiB only.
RECORD_STATEMENT = " ".join(RECORD_SQL.split())


async def _record_postgresql(
    pool: DriverPool,
    state: AppState,
    inbound: InboundMessage,
    entry: WebhookEntry,
) -> Recorded | None:
    now = utcnow()
    window = state.limits.flood
    params: dict[str, Any] = {
        "sid": inbound.sid,
        "channel": inbound.channel.value,
        "recipient": inbound.recipient,
        "sender": inbound.sender,
        "profile_name": inbound.profile_name[:200] if inbound.profile_name else None,
        "wa_id": inbound.wa_id[:64] if inbound.wa_id else None,
        "body": inbound.body,
        "simulated": inbound.simulated,
        "media": json.dumps(
            [{"url": m.url, "content_type": m.content_type} for m in inbound.media]
        ),
        "now": now,
        "window_over": window.starts_after(now),
        "flood_limit": window.limit,
        "limited_note": FLOOD_NOTE,
        "flag_reason": FLOOD_FLAG,
        "flood_reason": FLOOD_REASON,
        "endpoint": entry.endpoint,
        "token": entry.idempotency_token,
        "signature_valid": entry.signature_valid,
        "params": json.dumps(entry.params),
    }
    lost_connection = False
    for attempt in range(1, ATTEMPTS + 1):
        # One statement is one transaction: in autocommit, no BEGIN and COMMIT round trips.
        async with pool.connection() as connection:
            try:
                row = await (await connection.execute(RECORD_STATEMENT, params)).fetchone()
            except psycopg.OperationalError:
                # The connection was lost before or under the statement (a database restart,
                # an administrator's pg_terminate_backend: AdminShutdown, whether or not psycopg
                # has marked it broken yet). Nothing was written, or it was and the next attempt
                # finds the MessageSid stored. Once, on a fresh connection: this one is closed
                # (the pool drops it), and so are its idle siblings the same restart killed.
                if lost_connection or attempt == ATTEMPTS:
                    raise
                lost_connection = True
                await connection.close()
                await pool.check()
                continue
        if row is None:
            return None  # no account owns the number: nothing was written
        if row["logged"]:
            recorded = Recorded(
                account_id=row["account_id"],
                debounce_seconds=row["debounce_seconds"],
                message_id=row["message_id"],
                conversation_id=row["conversation_id"],
                flooded=row["flooded"],
                # The statement made the conversation due with the message.
                queued=row["message_id"] is not None and not row["flooded"],
            )
            entry.account_id = recorded.account_id
            entry.outcome, entry.reason = _outcome(recorded)
            entry.status_code = 200
            return recorded
        # The conversation was being opened by a concurrent first message from the same new
        # contact: only the contact row was written (its window counted this message once too
        # often, a cost of that rare race); run it again to see the conversation.
    raise RuntimeError(f"could not record {inbound.sid} in {ATTEMPTS} attempts")


# --- SQLite (and any other database): the ORM --------------------------------------------------


async def _record_orm(
    state: AppState, inbound: InboundMessage, entry: WebhookEntry
) -> Recorded | None:
    async with state.sessionmaker() as session:
        config = await repository.find_channel_config(session, inbound.channel, inbound.recipient)
        if config is None:
            return None
        account_id, debounce_seconds = config.account_id, config.debounce_seconds
        stored = await service.record_inbound(
            session,
            inbound,
            account_id,
            flood=state.limits.flood,
        )
        if stored is None:
            # A repeated delivery: undo whatever this transaction touched, keep only the log.
            await session.rollback()
        recorded = Recorded(
            account_id=account_id,
            debounce_seconds=debounce_seconds,
            message_id=stored.message_id if stored else None,
            conversation_id=stored.conversation_id if stored else None,
            flooded=stored.flooded if stored else False,
            queued=False,
        )
        entry.account_id = recorded.account_id
        entry.outcome, entry.reason = _outcome(recorded)
        entry.status_code = 200
        session.add(entry.row())
        await session.commit()
    return recorded


# --- Status callbacks ----------------------------------------------------------------------------

# The rule of models.status_move: `earlier` the statuses the report replaces, `clear` whether it
# clears the error. A report on a message in a final status (`final`) is logged as ignored.
STATUS_SQL = """
WITH moved AS (
    UPDATE messages
    SET status = %(status)s, updated_at = %(now)s,
        error_code = CASE WHEN %(clear)s THEN NULL
                          ELSE COALESCE(%(error_code)s, error_code) END,
        error_message = CASE WHEN %(clear)s THEN NULL
                             ELSE COALESCE(%(error_message)s, error_message) END
    WHERE twilio_sid = %(sid)s AND status = ANY(%(earlier)s)
    RETURNING id
),
verdict AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM moved) THEN 'updated'
                ELSE COALESCE((SELECT CASE WHEN status = ANY(%(final)s) THEN 'ignored'
                                           ELSE 'stale' END
                               FROM messages WHERE twilio_sid = %(sid)s), 'unknown')
           END AS outcome
),
logged AS (
    INSERT INTO webhook_logs (received_at, endpoint, message_sid, idempotency_token,
                              status_code, outcome, signature_valid, params)
    SELECT %(now)s, 'status', %(sid)s, %(token)s, 200, 'status_' || outcome, %(signature_valid)s,
           CAST(%(params)s AS jsonb)
    FROM verdict
    RETURNING outcome
)
SELECT outcome FROM verdict, (SELECT count(*) FROM logged) AS written
"""
STATUS_STATEMENT = " ".join(STATUS_SQL.split())
FINAL_STATUSES_SQL = sorted(status.value for status in FINAL_STATUSES)


async def record_status(
    state: AppState, update: StatusUpdate, entry: WebhookEntry
) -> service.StatusOutcome:
    """Apply a delivery status callback (models.status_move) and log it."""
    if state.driver_pool is None:
        async with state.sessionmaker() as session:
            outcome = await service.record_status(session, update)
            entry.status_code, entry.outcome = 200, f"status_{outcome.value}"
            session.add(entry.row())
            await session.commit()
        return outcome
    move = status_move(update.status)
    params = {
        "sid": update.sid,
        "status": update.status.value,
        "earlier": [status.value for status in move.replaces],
        "clear": move.clears_error,
        "final": FINAL_STATUSES_SQL,
        "error_code": update.error_code,
        "error_message": update.error_message,
        "now": utcnow(),
        "token": entry.idempotency_token,
        "signature_valid": entry.signature_valid,
        "params": json.dumps(entry.params),
    }
    async with state.driver_pool.connection() as connection:
        row = await (await connection.execute(STATUS_STATEMENT, params)).fetchone()
    assert row is not None
    outcome = service.StatusOutcome(row["outcome"])
    entry.status_code, entry.outcome = 200, f"status_{outcome.value}"
    return outcome
