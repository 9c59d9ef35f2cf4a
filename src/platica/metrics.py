"""Prometheus metrics, served at /metrics by ops.py."""

from prometheus_client import Counter, Gauge, Histogram

WEBHOOKS = Counter(
    "platica_webhooks_total",
    "Webhook requests by endpoint and outcome.",
    ["endpoint", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "platica_webhook_seconds",
    "Time to acknowledge a webhook.",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLY_OUTCOMES = (
    "ai",
    "fallback",
    "busy",
    "keyword",
    "skipped",
    "flood",
    "send_failed",
    "refused",
)
REPLIES = Counter(
    "platica_replies_total",
    "How inbound messages were dealt with. ai, fallback: replies stored (a burst answered "
    "together counts once); busy: the busy message, the channel's daily token budget being "
    "spent; keyword: STOP/START/HELP messages; skipped: messages not answered (opted out, "
    "closed or AI disabled); flood: messages over a sender's flood limit (stored, never "
    "answered); send_failed: reply messages Twilio refused, or given up on; refused: messages "
    "never handed to Twilio (free text outside WhatsApp's 24-hour window, or something Plática "
    "started for a contact who opted out since).",
    ["channel", "outcome"],
)
LLM_SECONDS = Histogram(
    "platica_llm_seconds",
    "Time of each LLM (Chat Completions) call, failed ones included.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
)
LLM_TOKENS = Counter(
    "platica_llm_tokens_total",
    "Tokens the LLM reported using, by kind (prompt or completion).",
    ["kind"],
)
TWILIO_SECONDS = Histogram(
    "platica_twilio_seconds",
    "Time of each call to Twilio's Messages API to send a message, failed ones included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
MEDIA_KINDS = ("audio", "image", "document", "location", "other")
MEDIA_OUTCOMES = ("understood", "failed")
MEDIA_ITEMS = Counter(
    "platica_media_items_total",
    "Inbound media items by kind (audio, image, document, location, other) and outcome "
    "(understood: transcribed, read or shown to the model; failed: given up, with why).",
    ["kind", "outcome"],
)
TRANSCRIPTION_SECONDS = Histogram(
    "platica_transcription_seconds",
    "Time of each call to transcribe a voice note (each try), failed ones included.",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
AUDIO_SECONDS = Counter(
    "platica_audio_seconds_total",
    "Seconds of voice notes transcribed (those whose length could be read).",
)
PENDING_REPLIES = Gauge(
    "platica_pending_replies",
    "Inbound messages waiting for their reply (reply_state pending), counted at each scrape.",
)
OLDEST_PENDING_SECONDS = Gauge(
    "platica_oldest_pending_reply_seconds",
    "How long the oldest inbound message still waiting for its reply has waited (0: none), "
    "at each scrape.",
)
PACED = Counter(
    "platica_replies_paced_total",
    "Times a conversation's reply waited for a pacing limit (RATE_LIMIT_PER_SENDER: sender, "
    "RATE_LIMIT_PER_ACCOUNT: account); its messages are answered later, together.",
    ["limit"],
)
BUDGETS_SPENT = Gauge(
    "platica_budgets_spent",
    "Channels (of all accounts) whose daily token budget is spent today, at each scrape: "
    "their conversations get the busy message.",
)
PARKED_CONVERSATIONS = Gauge(
    "platica_parked_conversations",
    "Conversations parked because their reply task kept crashing: nothing runs on them until "
    "an operator retries them. Counted at each scrape.",
)

OUTREACH = Counter(
    "platica_outreach_messages_total",
    "Messages Plática starts, by origin (proactive: an operator's, through POST "
    "/api/{channel}/messages or a manual reply; broadcast) and outcome. When asked for: queued "
    "(stored for sending), refused (an opted-out contact or free text outside WhatsApp's "
    "window: nothing stored), skipped (a broadcast's recipient left out: opted out, invalid or "
    "repeated), canceled (its broadcast canceled first). When sent: sent (Twilio accepted it), "
    "dry_run, failed (Twilio refused it or it was given up on), refused (checked again just "
    "before Twilio: the contact opted out, or the window closed, meanwhile). Delivery then "
    "shows in the messages' statuses.",
    ["channel", "origin", "outcome"],
)
BROADCAST_PACE = Gauge(
    "platica_broadcast_pace_mps",
    "Messages per second each channel's running broadcast is paced at (broadcast_mps; 0: none "
    "running), by channel, summed over accounts.",
    ["channel"],
)
OUTREACH_ORIGINS = ("proactive", "broadcast")
OUTREACH_OUTCOMES = ("queued", "refused", "skipped", "canceled", "sent", "dry_run", "failed")

# Every series from the start, at zero, so rates and alerts work before the first event.
for _channel in ("whatsapp", "sms"):
    for _outcome in REPLY_OUTCOMES:
        REPLIES.labels(_channel, _outcome)
for _kind in ("prompt", "completion"):
    LLM_TOKENS.labels(_kind)
for _channel in ("whatsapp", "sms"):
    BROADCAST_PACE.labels(_channel)
    for _origin in OUTREACH_ORIGINS:
        for _outcome in OUTREACH_OUTCOMES:
            OUTREACH.labels(_channel, _origin, _outcome)
for _limit in ("sender", "account"):
    PACED.labels(_limit)
for _kind in MEDIA_KINDS:
    for _outcome in MEDIA_OUTCOMES:
        MEDIA_ITEMS.labels(_kind, _outcome)
WEBHOOKS_UNLOGGED = Counter(
    "platica_webhooks_unlogged_total",
    "Rejected webhook requests neither written to webhook_logs nor logged: past the per-process "
    "limit on rejected requests (throttle.py), so a flood of forged posts cannot fill the disk.",
    ["endpoint"],
)
for _endpoint in ("whatsapp", "sms", "status"):
    WEBHOOKS_UNLOGGED.labels(_endpoint)
