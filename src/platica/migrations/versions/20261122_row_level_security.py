"""Row-level security and the SQL functions of the original design (PostgreSQL only)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

SQLite has neither, and this revision does nothing there.

Who sees which rows
-------------------
Every table of ours gets ROW LEVEL SECURITY (enabled, not forced) and one policy: a connection
that is not the tables' owner sees, and may write, only

- the rows of `platica_current_account()`, when that is known: the `platica.account_id`
  setting (the API sets it in each transaction of an account's API key or Supabase JWT), else,
  where Supabase's `auth` schema exists, the account whose `auth_user_id` is `auth.uid()`;
- every row, when no account is known and `platica.service` is 'on': Plática's own
  connections say so at connect time (webhooks, worker, CLI, the admin token);
- nothing otherwise (e.g. Supabase's `anon` role through PostgREST).

The owner (the role that ran the migrations) is not subject to the policies, so deployments
that connect as the owner work as before. To have the database enforce the separation, let
Plática connect as a role of its own that owns nothing and lacks BYPASSRLS, for example:

    CREATE ROLE platica_app LOGIN PASSWORD '...';   -- not SUPERUSER, not BYPASSRLS
    GRANT USAGE ON SCHEMA public TO platica_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO platica_app;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO platica_app;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO platica_app;

and keep running `platica db upgrade` as the owner (tables added by later revisions need the
same grants again; they get the same policy). Plática needs a direct or session-pooler
connection: a transaction pooler (Supabase's port 6543, PgBouncer in transaction mode) does not
work with it at all (README, "PostgreSQL / Supabase"), so the connection-level `SET
platica.service` always applies. The `platica.*` settings are not a boundary against whoever
can run arbitrary SQL as that role; Supabase's clients (PostgREST) cannot set them, and for
them `auth.uid()` decides.

(When this revision was written, the grants on ALL TABLES/FUNCTIONS also covered
Procrastinate's job queue, which had no RLS; revision 0006 dropped it.)

SQL functions
-------------
get_whatsapp_stats(), get_sms_stats(), get_whatsapp_engagement_metrics(),
get_sms_engagement_metrics() compute the figures of GET /api/{channel}/stats and /engagement
with the definitions of platica/conversations/stats.py (tests hold them to each other);
cleanup_old_whatsapp_conversations(), cleanup_old_sms_conversations(),
get_sms_conversation_history() and get_user_sms_stats() complete the set. All are SECURITY
INVOKER, so row-level security applies to them as to any query (callable through Supabase's
RPC); `p_account_id` NULL means every row the caller may see.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each table and the column naming its account.
TABLES = {
    "accounts": "id",
    "api_keys": "account_id",
    "channel_configs": "account_id",
    "contacts": "account_id",
    "conversations": "account_id",
    "messages": "account_id",
    "webhook_logs": "account_id",
}
POLICY = "platica_account_rows"

# Dropped in this order on downgrade (the public functions use the helpers).
FUNCTIONS = (
    "get_whatsapp_stats(uuid)",
    "get_sms_stats(uuid)",
    "get_whatsapp_engagement_metrics(integer, uuid)",
    "get_sms_engagement_metrics(integer, uuid)",
    "cleanup_old_whatsapp_conversations(integer, uuid)",
    "cleanup_old_sms_conversations(integer, uuid)",
    "get_sms_conversation_history(bigint, integer)",
    "get_user_sms_stats(text, uuid)",
    "platica_channel_stats(text, uuid)",
    "platica_engagement(text, integer, uuid)",
    "platica_cleanup_conversations(text, integer, uuid)",
    "platica_round_ms(double precision)",
    "platica_is_service()",
    "platica_current_account()",
)


def _current_account_sql(schema: str) -> str:
    accounts = f"{_quote(schema)}.accounts"
    return f"""
CREATE FUNCTION platica_current_account() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- The account whose rows this transaction may see, or NULL when none is known.
-- SECURITY DEFINER: reading accounts must not go through the policy that calls this.
DECLARE
    v_setting text := current_setting('platica.account_id', true);
    v_user uuid;
    v_account uuid;
BEGIN
    IF coalesce(v_setting, '') <> '' THEN
        RETURN v_setting::uuid;
    END IF;
    IF to_regnamespace('auth') IS NULL OR to_regprocedure('auth.uid()') IS NULL THEN
        RETURN NULL;
    END IF;
    -- Dynamic, so this compiles where Supabase's auth schema does not exist.
    EXECUTE 'SELECT auth.uid()' INTO v_user;
    IF v_user IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.id INTO v_account FROM {accounts} AS a WHERE a.auth_user_id = v_user;
    RETURN v_account;
END
$$;
"""


IS_SERVICE = """
CREATE FUNCTION platica_is_service() RETURNS boolean
LANGUAGE sql STABLE
AS $$
    -- Plática's own connections (webhooks, worker, CLI, admin token) SET platica.service = 'on'.
    SELECT coalesce(current_setting('platica.service', true), '') = 'on'
$$;
"""

ROUND_MS = """
CREATE FUNCTION platica_round_ms(p_value double precision) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
-- Exactly what the API's Python computes with round(value, 1): the nearest tenth to the
-- float's exact binary value, ties to even (1500.25 gives 1500.2, where round(numeric)
-- would give 1500.3), so that SQL and API figures agree to the last digit.
DECLARE
    v_abs double precision := abs(p_value);
    v_mantissa double precision;
    v_shift integer := 0;
    v_scaled bigint;
    v_denominator bigint;
    v_quotient bigint;
    v_remainder bigint;
BEGIN
    IF p_value = 'NaN'::double precision OR v_abs = 'Infinity'::double precision THEN
        RETURN NULL;
    END IF;
    IF v_abs >= 4503599627370496 THEN  -- 2^52: every such float is a whole number
        RETURN round(p_value::numeric, 1);
    END IF;
    IF v_abs < 0.04 THEN
        RETURN 0.0;
    END IF;
    -- v_abs = v_mantissa / 2^v_shift exactly; v_shift <= 57 from here on.
    v_mantissa := v_abs;
    WHILE v_mantissa <> floor(v_mantissa) LOOP
        v_mantissa := v_mantissa * 2;
        v_shift := v_shift + 1;
    END LOOP;
    v_scaled := v_mantissa::bigint * 10;
    v_denominator := 1::bigint << v_shift;
    v_quotient := v_scaled / v_denominator;
    v_remainder := v_scaled % v_denominator;
    IF 2 * v_remainder > v_denominator
        OR (2 * v_remainder = v_denominator AND v_quotient % 2 = 1) THEN
        v_quotient := v_quotient + 1;
    END IF;
    RETURN sign(p_value)::numeric * v_quotient * 0.1;
END
$$;
"""

CHANNEL_STATS = """
CREATE FUNCTION platica_channel_stats(p_channel text, p_account_id uuid DEFAULT NULL)
RETURNS json
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $$
-- GET /api/{channel}/stats: see platica/conversations/stats.py channel_stats().
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_conversations bigint;
    v_active bigint;
    v_messages bigint;
    v_incoming bigint;
    v_outgoing bigint;
    v_users_24h bigint;
    v_users_7d bigint;
    v_average double precision;
BEGIN
    IF p_channel IS NULL OR p_channel NOT IN ('whatsapp', 'sms') THEN
        RAISE EXCEPTION 'channel must be whatsapp or sms, not %', coalesce(p_channel, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT count(*), count(*) FILTER (WHERE c.status = 'active')
      INTO v_conversations, v_active
      FROM conversations AS c
     WHERE c.channel = p_channel
       AND (p_account_id IS NULL OR c.account_id = p_account_id);
    SELECT count(*),
           count(*) FILTER (WHERE m.direction = 'inbound'),
           count(*) FILTER (WHERE m.direction = 'outbound')
      INTO v_messages, v_incoming, v_outgoing
      FROM messages AS m
     WHERE m.channel = p_channel
       AND (p_account_id IS NULL OR m.account_id = p_account_id);
    -- Contacts who wrote in the last 24 hours / 7 days (hours, not calendar days: no DST).
    SELECT count(DISTINCT CASE WHEN m.created_at >= v_now - interval '24 hours'
                               THEN c.contact_id END),
           count(DISTINCT c.contact_id)
      INTO v_users_24h, v_users_7d
      FROM messages AS m
      JOIN conversations AS c ON c.id = m.conversation_id
     WHERE m.channel = p_channel
       AND m.direction = 'inbound'
       AND m.created_at >= v_now - interval '168 hours'
       AND (p_account_id IS NULL OR m.account_id = p_account_id);
    -- From an answered inbound message to the first part of its AI (or fallback) reply.
    SELECT avg((extract(epoch FROM r.created_at - a.created_at) * 1000)::double precision)
      INTO v_average
      FROM messages AS r
      JOIN messages AS a ON a.id = r.reply_to_id
     WHERE r.channel = p_channel
       AND r.direction = 'outbound'
       AND r.author IN ('ai', 'system')
       AND r.part = 0
       AND a.reply_state = 'answered'
       AND (p_account_id IS NULL OR r.account_id = p_account_id);
    RETURN json_build_object(
        'channel', p_channel,
        'total_conversations', v_conversations,
        'active_conversations', v_active,
        'total_messages', v_messages,
        'incoming_messages', v_incoming,
        'outgoing_messages', v_outgoing,
        'avg_response_time_ms', platica_round_ms(v_average),
        'active_users_24h', v_users_24h,
        'active_users_7d', v_users_7d
    );
END
$$;
"""

ENGAGEMENT = """
CREATE FUNCTION platica_engagement(
    p_channel text, p_days integer DEFAULT 30, p_account_id uuid DEFAULT NULL
)
RETURNS TABLE(
    date date,
    messages bigint,
    incoming_messages bigint,
    outgoing_messages bigint,
    conversations bigint,
    replies bigint,
    avg_response_time_ms numeric
)
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $$
-- GET /api/{channel}/engagement: one row per UTC day of the last p_days days, today included,
-- oldest first, empty days included. See platica/conversations/stats.py engagement().
#variable_conflict use_column
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_first date;
    v_since timestamptz;
BEGIN
    IF p_channel IS NULL OR p_channel NOT IN ('whatsapp', 'sms') THEN
        RAISE EXCEPTION 'channel must be whatsapp or sms, not %', coalesce(p_channel, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_days IS NULL OR p_days < 1 OR p_days > 366 THEN
        RAISE EXCEPTION 'p_days must be between 1 and 366, not %', coalesce(p_days::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_first := v_today - (p_days - 1);
    v_since := v_first::timestamp AT TIME ZONE 'UTC';
    RETURN QUERY
    WITH days AS (
        SELECT v_first + i AS day FROM generate_series(0, p_days - 1) AS i
    ),
    counts AS (
        SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day,
               count(*) AS messages,
               count(*) FILTER (WHERE m.direction = 'inbound') AS incoming,
               count(*) FILTER (WHERE m.direction = 'outbound') AS outgoing,
               count(DISTINCT m.conversation_id) AS conversations
          FROM messages AS m
         WHERE m.channel = p_channel
           AND m.created_at >= v_since
           AND (p_account_id IS NULL OR m.account_id = p_account_id)
         GROUP BY 1
    ),
    answers AS (
        SELECT (r.created_at AT TIME ZONE 'UTC')::date AS day,
               count(*) AS replies,
               avg((extract(epoch FROM r.created_at - a.created_at) * 1000)::double precision)
                   AS average
          FROM messages AS r
          JOIN messages AS a ON a.id = r.reply_to_id
         WHERE r.channel = p_channel
           AND r.direction = 'outbound'
           AND r.author IN ('ai', 'system')
           AND r.part = 0
           AND a.reply_state = 'answered'
           AND r.created_at >= v_since
           AND (p_account_id IS NULL OR r.account_id = p_account_id)
         GROUP BY 1
    )
    SELECT d.day,
           coalesce(c.messages, 0),
           coalesce(c.incoming, 0),
           coalesce(c.outgoing, 0),
           coalesce(c.conversations, 0),
           coalesce(x.replies, 0),
           platica_round_ms(x.average)
      FROM days AS d
      LEFT JOIN counts AS c ON c.day = d.day
      LEFT JOIN answers AS x ON x.day = d.day
     ORDER BY d.day;
END
$$;
"""

CLEANUP = """
CREATE FUNCTION platica_cleanup_conversations(
    p_channel text, p_days integer, p_account_id uuid DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
-- Close the channel's active conversations with no message for p_days days; how many.
DECLARE
    v_closed integer;
BEGIN
    IF p_channel IS NULL OR p_channel NOT IN ('whatsapp', 'sms') THEN
        RAISE EXCEPTION 'channel must be whatsapp or sms, not %', coalesce(p_channel, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_days IS NULL OR p_days < 1 THEN
        RAISE EXCEPTION 'p_days must be at least 1, not %', coalesce(p_days::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE conversations AS c
       SET status = 'closed', closed_at = now()
     WHERE c.channel = p_channel
       AND c.status = 'active'
       AND c.last_message_at < now() - make_interval(hours => 24 * p_days)
       AND (p_account_id IS NULL OR c.account_id = p_account_id);
    GET DIAGNOSTICS v_closed = ROW_COUNT;
    RETURN v_closed;
END
$$;
"""

PER_CHANNEL = """
CREATE FUNCTION get_{channel}_stats(p_account_id uuid DEFAULT NULL) RETURNS json
LANGUAGE sql STABLE SECURITY INVOKER
AS $$ SELECT platica_channel_stats('{channel}', p_account_id) $$;

CREATE FUNCTION get_{channel}_engagement_metrics(
    p_days integer DEFAULT 30, p_account_id uuid DEFAULT NULL
)
RETURNS TABLE(
    date date,
    messages bigint,
    incoming_messages bigint,
    outgoing_messages bigint,
    conversations bigint,
    replies bigint,
    avg_response_time_ms numeric
)
LANGUAGE sql STABLE SECURITY INVOKER
AS $$ SELECT * FROM platica_engagement('{channel}', p_days, p_account_id) $$;

CREATE FUNCTION cleanup_old_{channel}_conversations(
    p_days integer, p_account_id uuid DEFAULT NULL
)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY INVOKER
AS $$ SELECT platica_cleanup_conversations('{channel}', p_days, p_account_id) $$;
"""

SMS_HISTORY = """
CREATE FUNCTION get_sms_conversation_history(
    p_conversation_id bigint, p_limit integer DEFAULT 500
)
RETURNS SETOF messages
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $$
-- Like GET /api/sms/conversations/{id}/history: the newest p_limit messages, oldest first.
BEGIN
    IF p_conversation_id IS NULL THEN
        RAISE EXCEPTION 'p_conversation_id is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 2000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 2000, not %', coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT newest.*
      FROM (SELECT m.*
              FROM messages AS m
             WHERE m.conversation_id = p_conversation_id AND m.channel = 'sms'
             ORDER BY m.id DESC
             LIMIT p_limit) AS newest
     ORDER BY newest.id;
END
$$;
"""

USER_SMS_STATS = """
CREATE FUNCTION get_user_sms_stats(p_phone text, p_account_id uuid DEFAULT NULL)
RETURNS json
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $$
-- One SMS contact (by E.164 number) across its conversations; with p_account_id NULL, the
-- contact of that number in every account the caller may see.
DECLARE
    v_phone text := btrim(p_phone);
    v_conversations bigint;
    v_messages bigint;
    v_incoming bigint;
    v_outgoing bigint;
    v_first timestamptz;
    v_last timestamptz;
    v_opted_out boolean;
BEGIN
    IF v_phone IS NULL OR v_phone = '' THEN
        RAISE EXCEPTION 'p_phone is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(bool_or(k.opted_out), false)
      INTO v_opted_out
      FROM contacts AS k
     WHERE k.channel = 'sms' AND k.address = v_phone
       AND (p_account_id IS NULL OR k.account_id = p_account_id);
    SELECT count(*)
      INTO v_conversations
      FROM conversations AS c
      JOIN contacts AS k ON k.id = c.contact_id
     WHERE k.channel = 'sms' AND k.address = v_phone
       AND (p_account_id IS NULL OR k.account_id = p_account_id);
    SELECT count(m.id),
           count(m.id) FILTER (WHERE m.direction = 'inbound'),
           count(m.id) FILTER (WHERE m.direction = 'outbound'),
           min(m.created_at),
           max(m.created_at)
      INTO v_messages, v_incoming, v_outgoing, v_first, v_last
      FROM messages AS m
      JOIN conversations AS c ON c.id = m.conversation_id
      JOIN contacts AS k ON k.id = c.contact_id
     WHERE k.channel = 'sms' AND k.address = v_phone
       AND (p_account_id IS NULL OR k.account_id = p_account_id);
    RETURN json_build_object(
        'phone', v_phone,
        'conversations', v_conversations,
        'messages', v_messages,
        'incoming_messages', v_incoming,
        'outgoing_messages', v_outgoing,
        'first_message_at', v_first,
        'last_message_at', v_last,
        'opted_out', v_opted_out
    );
END
$$;
"""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _visible(column: str) -> str:
    """The policy: the current account's rows, or every row for the service without one."""
    return (
        "((SELECT platica_current_account()) IS NOT NULL"
        f" AND {column} = (SELECT platica_current_account()))"
        " OR ((SELECT platica_current_account()) IS NULL AND (SELECT platica_is_service()))"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.exec_driver_sql("SELECT current_schema()").scalar_one()
    op.execute(_current_account_sql(str(schema)))
    op.execute(IS_SERVICE)
    op.execute(ROUND_MS)
    for table, column in TABLES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {POLICY} ON {table} USING ({_visible(column)})"
            f" WITH CHECK ({_visible(column)})"
        )
    op.execute(CHANNEL_STATS)
    op.execute(ENGAGEMENT)
    op.execute(CLEANUP)
    for channel in ("whatsapp", "sms"):
        op.execute(PER_CHANNEL.format(channel=channel))
    op.execute(SMS_HISTORY)
    op.execute(USER_SMS_STATS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
