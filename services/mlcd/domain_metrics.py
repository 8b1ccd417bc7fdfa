"""Domain metrics for the on-call's dashboard, per model, on `/metrics`: gates waiting, rollouts by outcome,
change-failure ratio, training duration and the time from a batch's arrival to its model being champion.

The figures come from the shared state store, so every process and replica reports the same truth
(aggregate them with `max by (model)`, never `sum`). The store's driver is asynchronous and a Prometheus
collector is not, so a supervised worker reads the store every `interval_s` within `timeout_s` and keeps the
answer; a scrape only reads that answer and never waits on the store. An answer older than `max_age_s`
is not served: no figures is the truth about a store that has not answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import logs
from mlcd.store import figures
from mlcd.supervisor import Worker

log = logs.get(__name__)

INTERVAL_S = 15.0
TIMEOUT_S = 10.0
MAX_AGE_S = 120.0


@dataclass(frozen=True)
class Snapshot:
    """The store's figures as read at `taken` (monotonic seconds)."""

    taken: float
    models: dict[str, figures.ModelFigures]


class DomainCollector(Collector):
    """Serves the newest snapshot as metric families; registered once per process."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.snapshot: Snapshot | None = None
        self.last_read_ok = False

    def describe(self) -> list[Metric]:
        # Declaring no names skips the registry's clash check (no other collector uses these names)
        # and keeps `register` from calling `collect` before the first read.
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        age = time.monotonic() - snapshot.taken if snapshot is not None else None
        up = GaugeMetricFamily(
            "mlcd_domain_figures_up",
            "1 when the last read of the state store for the domain figures answered",
        )
        up.add_metric([], 1.0 if self.last_read_ok else 0.0)
        yield up
        if snapshot is None or age is None or age > self.max_age_s:
            return
        fresh = GaugeMetricFamily(
            "mlcd_domain_figures_age_seconds", "Seconds since the domain figures were read from the store"
        )
        fresh.add_metric([], age)
        yield fresh
        yield from _families(snapshot.models, datetime.now(UTC))


def _families(models: dict[str, figures.ModelFigures], now: datetime) -> Iterator[Metric]:
    gate_count = GaugeMetricFamily("mlcd_gates", "Promotion gates by state", labels=["model", "state"])
    oldest = GaugeMetricFamily(
        "mlcd_gate_oldest_open_age_seconds",
        "How long the model's oldest open gate has waited for a decision (0 when none is open)",
        labels=["model"],
    )
    rollout_count = GaugeMetricFamily(
        "mlcd_rollouts", "Rollouts by outcome (running and paused: in progress)", labels=["model", "outcome"]
    )
    failure_ratio = GaugeMetricFamily(
        "mlcd_change_failure_ratio",
        "Rollouts rolled back or aborted over those that finished moving traffic (succeeded or not)",
        labels=["model"],
    )
    runs = GaugeMetricFamily("mlcd_training_runs", "Training runs by state", labels=["model", "state"])
    duration = GaugeMetricFamily(
        "mlcd_training_last_duration_seconds",
        "Duration of the model's most recently finished training run (succeeded or failed)",
        labels=["model"],
    )
    lead = GaugeMetricFamily(
        "mlcd_data_to_champion_seconds",
        "From the arrival of the batch the newest champion was trained on to its rollout's success",
        labels=["model"],
    )
    for model, found in sorted(models.items()):
        for state in figures.GATE_STATES:
            gate_count.add_metric([model, state], found.gates.get(state, 0))
        waited = (now - found.oldest_open_gate_at).total_seconds() if found.oldest_open_gate_at else 0.0
        oldest.add_metric([model], max(waited, 0.0))
        for outcome in figures.ROLLOUT_OUTCOMES:
            rollout_count.add_metric([model, outcome], found.rollouts.get(outcome, 0))
        if found.change_failure_ratio is not None:
            failure_ratio.add_metric([model], found.change_failure_ratio)
        for state in figures.TRAINING_STATES:
            runs.add_metric([model, state], found.training_runs.get(state, 0))
        if found.last_training_s is not None:
            duration.add_metric([model], found.last_training_s)
        if found.data_to_champion_s is not None:
            lead.add_metric([model], found.data_to_champion_s)
    yield from (gate_count, oldest, rollout_count, failure_ratio, runs, duration, lead)


COLLECTOR = DomainCollector()
REGISTRY.register(COLLECTOR)


class Refresher:
    """Reads the store for `collector` every `interval_s`, each read bounded by `timeout_s`."""

    def __init__(
        self,
        engine: AsyncEngine,
        collector: DomainCollector = COLLECTOR,
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.collector = collector
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._failing = False
        self._reading: asyncio.Task[dict[str, figures.ModelFigures]] | None = None

    async def refresh(self) -> bool:
        """One read, answered within `timeout_s`; on failure the collector keeps its last answer (until it
        is too old) and says so. A read that overran is cancelled; SQLite's driver may hold it until its
        busy timeout, and no second read starts meanwhile."""
        if self._reading is not None and not self._reading.done():
            return self._failed("the previous read has not ended")
        reading = self._reading = asyncio.create_task(self._read(), name="domain-metrics-read")
        reading.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({reading}, timeout=self.timeout_s)
        if not done:
            reading.cancel()
            return self._failed(f"no answer within {self.timeout_s:g}s")
        if reading.cancelled():
            return self._failed("the read was cancelled")
        error = reading.exception()
        if error is not None:
            return self._failed(
                logs.without_url_credentials(f"{type(error).__name__}: {error}".splitlines()[0])
            )
        self.collector.snapshot = Snapshot(time.monotonic(), reading.result())
        self.collector.last_read_ok = True
        self._failing = False
        return True

    async def _read(self) -> dict[str, figures.ModelFigures]:
        async with self.engine.connect() as conn:
            return await figures.read(conn)

    def _failed(self, why: str) -> bool:
        if not self._failing:  # once per outage, not at every read
            log.warning("domain figures not read from the store", error=why)
        self._failing = True
        self.collector.last_read_ok = False
        return False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.refresh()
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass
        finally:
            if self._reading is not None and not self._reading.done():
                self._reading.cancel()
                # Not awaited past a second: a driver stuck in a lock wait lets go on its own.
                await asyncio.wait({self._reading}, timeout=1.0)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A read that failed after its refresh gave up on it is already reported; do not warn again."""
    if not task.cancelled():
        task.exception()


def worker(engine: AsyncEngine) -> Worker:
    """The supervised worker that keeps this process's domain figures fresh."""
    return Worker("domain-metrics", Refresher(engine).run)
