"""Prometheus metrics, served at /metrics by ops.py."""

from prometheus_client import Counter, Histogram

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
