"""Prometheus metrics shared by every service process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("mlcd_events_consumed_total", "Events handled", ["group", "type"])
EVENTS_PUBLISHED = Counter("mlcd_events_published_total", "Events published to the bus", ["type"])
EVENTS_FAILED = Counter("mlcd_events_failed_total", "Handler attempts that raised", ["group", "type"])
EVENTS_DEAD_LETTERED = Counter(
    "mlcd_events_dead_lettered_total", "Records parked on the DLQ", ["group", "type"]
)
EVENTS_DUPLICATE = Counter(
    "mlcd_events_duplicate_total", "Redelivered events skipped by the inbox", ["group"]
)
HANDLER_SECONDS = Histogram(
    "mlcd_handler_seconds",
    "Handler latency",
    ["group", "type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge("mlcd_consumer_lag", "Records behind the partition end", ["group", "topic", "partition"])
OUTBOX_PENDING = Gauge("mlcd_outbox_pending", "Outbox rows not yet published")
WEBHOOKS = Counter("mlcd_webhooks_total", "Webhook deliveries by outcome", ["source", "status"])
