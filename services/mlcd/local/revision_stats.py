"""Per-revision request, error and latency counters of local serving.

Exported as Prometheus metrics (the process's default registry, scraped at `/metrics`) and kept as a
bounded window of recent requests, so the embedded analysis reads the same figures without Prometheus.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "mlcd_serving_requests_total", "Inference requests by model revision", ["model", "version", "outcome"]
)
LATENCY = Histogram(
    "mlcd_serving_request_seconds",
    "Inference latency by model revision",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRAFFIC = Gauge(
    "mlcd_serving_traffic_percent", "Share of requests routed to a model revision", ["model", "version"]
)

_WINDOW_LIMIT = 100_000


@dataclass(frozen=True)
class _Sample:
    at: float
    seconds: float
    error: bool


class RevisionStats:
    """Thread-safe: predictions run in worker threads."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], deque[_Sample]] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, version: str, seconds: float, *, error: bool) -> None:
        REQUESTS.labels(model, version, "error" if error else "ok").inc()
        LATENCY.labels(model, version).observe(seconds)
        with self._lock:
            window = self._samples.setdefault((model, version), deque(maxlen=_WINDOW_LIMIT))
            window.append(_Sample(time.monotonic(), seconds, error))

    def figures(self, model: str, version: str, window_s: float) -> dict[str, float]:
        """requests, errors, error_rate and p95_latency_s of the revision over the last `window_s`."""
        since = time.monotonic() - window_s
        with self._lock:
            recent = [s for s in self._samples.get((model, version), ()) if s.at >= since]
        errors = sum(1 for s in recent if s.error)
        return {
            "requests": float(len(recent)),
            "errors": float(errors),
            "error_rate": errors / len(recent) if recent else 0.0,
            "p95_latency_s": _p95([s.seconds for s in recent]),
        }


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def set_traffic(model: str, split: dict[str, int]) -> None:
    """Export each revision's share, and its request series at zero from the moment it is routed:
    an error rate of a revision without errors is then 0, not an empty (inconclusive) PromQL result,
    and `increase()` counts its first requests."""
    for version, percent in split.items():
        TRAFFIC.labels(model, version).set(percent)
        for outcome in ("ok", "error"):
            REQUESTS.labels(model, version, outcome)
        LATENCY.labels(model, version)
