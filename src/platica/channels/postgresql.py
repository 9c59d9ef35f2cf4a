"""The webhooks' writes on PostgreSQL: one statement each, in autocommit (one round trip).

Every message and every delivery report comes through here, and Twilio waits on it. The rules
are those of SQLite's Core statements (channels/inbound.py) and of conversations/statuses.py;
the due time is jobs.queue's (`due_sql`).

`RECORD_STATEMENT` is written by hand: the rules of channels/inbound.py's SQLite statements in
one statement. What that saves, measured here (PostgreSQL 15 on loopback, 1,500 sequential
webhooks after a warm-up, twice): the same five Core statements in a transaction (through
psycopg: BEGIN, the five, COMMIT: seven round trips) took 1.9-2.5 ms per message and 1.0 ms of
Plática's CPU; this one 0.7-1.1 ms and 0.25 ms. At the benchmark's 300 webhooks/s, 0.75 ms of
CPU per message more is a quarter of a core.

`STATUS` is statuses.ADVANCE itself inside one statement: 0.5-0.8 ms and 0.22-0.25 ms of CPU per
callback, against 0.9-1.7 ms and 0.47-0.63 ms for ADVANCE, the outcome and the log entry as
statements of a transaction (and the same as the hand-written statement it replaced).
"""

from __future__ import annotations

import json
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Table,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
)

from platica.channels.parsing import InboundMessage, media_rows
from platica.conversations import statuses
from platica.db import DriverPool, Rows, execute_alone
from platica.jobs.queue import due_sql
from platica.models import Message, WebhookLog
from platica.ratelimit import FLOOD_FLAG, FLOOD_NOTE, Window

FLOOD_REASON = "over the sender's flood limit (RATE_LIMIT_FLOOD)"
FLOOD_MEDIA_ERROR = "not read: the message is over the sender's flood limit"

# A first message from a new contact, arriving twice at once, can find the conversation the
# other transaction is opening; the statement then stores nothing and is run again.
ATTEMPTS = 3

# --- An inbound message ---------------------------------------------------------------------------
#
# Data-modifying CTEs see one snapshot and each other only through RETURNING; each runs once.
# `contact` locks the contact row first (upsert, counting the message in its flood window and
# flagging the contact when it is over), then the conversation is found or opened, touched (and
# made due for its reply, debounce included, unless the message is over the flood limit), and
# the message inserted: the lock order of every other writer (contact, conversation, messages).
#
# Rows are looked up by comparing with a subquery's value, `contact_id = (SELECT id FROM
# contact)`, never by joining CTEs to tables: a join may be planned, while the tables are small,
# as a walk through every active conversation, and the prepared statement would keep that plan
# as they grow (the cost per webhook tripled over its first 5,000 messages).

RECORD_SQL = f"""
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
                            ELSE {due_sql("cfg.due")} END
    FROM contact, cfg
    WHERE conversations.id IN (SELECT id FROM existing)
      AND (last_message_at < %(now)s OR NOT contact.limited)
    RETURNING conversations.id
),
message AS (
    INSERT INTO messages (account_id, conversation_id, channel, direction, author, body, twilio_sid,
                          status, reply_state, note, attempts, part, simulated,
                          created_at, updated_at)
    SELECT contact.account_id, conversation.id, %(channel)s, 'inbound', 'contact', %(body)s,
           %(sid)s, 'received',
           CASE WHEN contact.limited THEN 'skipped' ELSE 'pending' END,
           CASE WHEN contact.limited THEN %(limited_note)s END,
           0, 0, %(simulated)s, %(now)s, %(now)s
    FROM contact, conversation
    ON CONFLICT (twilio_sid) DO NOTHING
    RETURNING id, conversation_id, reply_state
),
{{MEDIA_CTE}}verdict AS (
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
# The message's media items (parsing.media_rows), as a JSON array: only in the statement for
# messages that have some, so that text messages pay nothing for them.
MEDIA_CTE = """
stored_media AS (
    INSERT INTO media (account_id, message_id, position, kind, content_type, url, state, attempts,
                       text, error, latitude, longitude, created_at, updated_at)
    SELECT contact.account_id, message.id, item.position, item.kind, item.content_type, item.url,
           CASE WHEN contact.limited AND item.state = 'pending' THEN 'failed' ELSE item.state END,
           0, item.text,
           CASE WHEN contact.limited AND item.state = 'pending' THEN %(flood_media_error)s END,
           item.latitude, item.longitude, %(now)s, %(now)s
    FROM message, contact, jsonb_to_recordset(CAST(%(media)s AS jsonb)) AS item(
        position integer, kind text, content_type text, url text, state text, text text,
        latitude double precision, longitude double precision)
),
"""
# Whitespace collapsed: psycopg caches its parse of statements up to 4 KiB only.
RECORD_STATEMENT = " ".join(RECORD_SQL.replace("{MEDIA_CTE}", "").split())
RECORD_WITH_MEDIA_STATEMENT = " ".join(RECORD_SQL.replace("{MEDIA_CTE}", MEDIA_CTE).split())


async def record(
    pool: DriverPool,
    inbound: InboundMessage,
    log: dict[str, Any],
    flood: Window,
) -> dict[str, Any] | None:
    """Run RECORD_STATEMENT (with its media: RECORD_WITH_MEDIA_STATEMENT) for `inbound` (and its
    log entry, `log`: endpoint, token,
    signature_valid, params); its row, or None when no account owns the number (nothing
    written)."""
    now = log["received_at"]
    params: dict[str, Any] = {
        "sid": inbound.sid,
        "channel": inbound.channel.value,
        "recipient": inbound.recipient,
        "sender": inbound.sender,
        "profile_name": inbound.profile_name[:200] if inbound.profile_name else None,
        "wa_id": inbound.wa_id[:64] if inbound.wa_id else None,
        "body": inbound.body,
        "simulated": inbound.simulated,
        "now": now,
        "window_over": flood.starts_after(now),
        "flood_limit": flood.limit,
        "limited_note": FLOOD_NOTE,
        "flag_reason": FLOOD_FLAG,
        "flood_reason": FLOOD_REASON,
        "endpoint": log["endpoint"],
        "token": log["idempotency_token"],
        "signature_valid": log["signature_valid"],
        "params": json.dumps(log["params"]),
    }
    statement = RECORD_STATEMENT
    if rows := media_rows(inbound):
        statement = RECORD_WITH_MEDIA_STATEMENT
        params["media"] = json.dumps(rows)
        params["flood_media_error"] = FLOOD_MEDIA_ERROR
    lost_connection = False
    for attempt in range(1, ATTEMPTS + 1):
        # One statement is one transaction: in autocommit, no BEGIN and COMMIT round trips.
        async with pool.connection() as connection:
            try:
                row = await (await connection.execute(statement, params)).fetchone()
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
        if row is None or row["logged"]:
            return row
        # The conversation was being opened by a concurrent first message from the same new
        # contact: only the contact row was written (its window counted this message once too
        # often, a cost of that rare race); run it again to see the conversation.
    raise RuntimeError(f"could not record {inbound.sid} in {ATTEMPTS} attempts")


# --- A delivery report ----------------------------------------------------------------------------
#
# statuses.ADVANCE itself, as a data-modifying CTE, with the outcome and the log entry: one round
# trip in autocommit, where ADVANCE, then why it moved nothing, then the log entry in a
# transaction take five (BEGIN and COMMIT included; see the module's docstring).

_logs_table = cast(Table, WebhookLog.__table__)
_logs = _logs_table.c
_moved = statuses.ADVANCE.returning(cast(Table, Message.__table__).c.id).cte("moved")
_verdict = select(
    case(
        (exists(select(_moved.c.id)), literal(statuses.StatusOutcome.updated.value)),
        else_=func.coalesce(statuses.NOT_MOVED, statuses.StatusOutcome.unknown.value),
    ).label("outcome")
).cte("verdict")
_logged = (
    insert(_logs_table)
    .from_select(
        [
            "received_at",
            "endpoint",
            "message_sid",
            "idempotency_token",
            "status_code",
            "outcome",
            "signature_valid",
            "params",
        ],
        select(
            bindparam("now", type_=_logs.received_at.type),
            literal("status"),
            bindparam("sid", type_=_logs.message_sid.type),
            bindparam("token", type_=_logs.idempotency_token.type),
            literal(200),
            literal("status_") + _verdict.c.outcome,
            bindparam("signature_valid", type_=_logs.signature_valid.type),
            bindparam("params", type_=_logs.params.type),
        ).select_from(_verdict),
    )
    .returning(_logs.id)
    .cte("logged")
)
STATUS = select(
    _verdict.c.outcome,
    select(func.count()).select_from(_logged).scalar_subquery().label("logged"),
)


async def apply_status(
    pool: DriverPool, update: statuses.StatusUpdate, log: dict[str, Any]
) -> statuses.StatusOutcome:
    """Run STATUS for `update` (and its log entry, `log`); what it did."""
    params = {
        **statuses.advance_params(update, log["received_at"]),
        "token": log["idempotency_token"],
        "signature_valid": log["signature_valid"],
        "params": log["params"],
    }
    rows: Rows = await execute_alone(pool, STATUS, params)
    return statuses.StatusOutcome(rows.scalar())
