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
WORKER_UP = Gauge(
    "mlcd_worker_up", "1 while a supervised worker runs, 0 while it waits to restart", ["worker"]
)
WORKER_RESTARTS = Counter(
    "mlcd_worker_restarts_total", "Supervised workers restarted after a failure", ["worker"]
)
CONSUMER_HELD = Gauge(
    "mlcd_consumer_held", "1 while a consumer holds its batch waiting for the state store", ["group"]
)
ADAPTER_UP = Gauge("mlcd_adapter_up", "1 when the outside system answered the last health check", ["adapter"])
