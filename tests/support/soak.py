"""A bounded soak through the real pipeline, shared by tests/faults/test_soak.py and benchmarks/soak.py.

`mlcd serve ingest` and the probe consumer (tests.support.worker: one effect row and one emitted
DataValidated per DataArrived) run in processes of their own on a Kafka-protocol broker and PostgreSQL.
A fixed-rate sender posts signed MinIO notifications over loopback on a schedule (slot n at t0 + n/rate,
never "as fast as possible"), while the resident memory of both processes is sampled every second. After
the load everything is read back from the store: the ingest's journal, the consumer's inbox, its effects,
its emitted events and the dead letters, plus every record on the data and DLQ topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.store.database import create_engine
from mlcd.store.tables import dead_letters, inbox, outbox
from tests.support import effects, flows, processes, webhook_traffic
from tests.support.ingest_app import MINIO_TOKEN
from tests.support.mlcd_service import ServiceProcess
from tests.support.topic_tail import TopicTail
from tests.support.webhook_traffic import HOOK_TIMEOUT_S, Delivery, minio_put

REPO = Path(__file__).resolve().parents[2]
PROBE_GROUP = "mlcd-probe"
ARRIVED = events.DataArrived.type
VALIDATED = events.DataValidated.type
COPIES = ("journal", "inbox", "effects", "replies")  # where each accepted event id must be exactly once


# --- the processes ------------------------------------------------------------------------------------


def service_env(bootstrap: str, database_url: str, home: Path, namespace: str) -> dict[str, str]:
    """The MLCD_* environment both processes share: one broker namespace, one store."""
    return {
        "MLCD_HOME": str(home),
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        "MLCD_DATABASE_URL": database_url,
        "MLCD_KAFKA_BOOTSTRAP": bootstrap,
        "MLCD_KAFKA_NAMESPACE": namespace,
        "MLCD_KAFKA_SESSION_TIMEOUT_S": "6",
        "MLCD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
        "MLCD_MINIO_WEBHOOK_TOKEN": MINIO_TOKEN,
        "MLCD_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{REPO}:{REPO / 'services'}",
    }


@dataclass
class Pipeline:
    ingest: ServiceProcess
    probe_pid: int
    env: dict[str, str]

    @property
    def pids(self) -> dict[str, int]:
        assert self.ingest.process is not None
        return {"ingest": self.ingest.process.pid, "probe": self.probe_pid}


@contextmanager
def pipeline(env: dict[str, str], log_dir: Path) -> Iterator[Pipeline]:
    """Ingest, then (once it has migrated the store) the probe consumer; both stopped on exit."""
    ingest = ServiceProcess("ingest", env, log_dir)
    probe = None
    try:
        ingest.start()
        probe_log = log_dir / "probe.log"
        # The worker logs at INFO whatever MLCD_LOG_LEVEL says; "services started" is its readiness line.
        probe = processes.start([sys.executable, "-m", "tests.support.worker"], probe_log, env, REPO)
        processes.wait_until(lambda: "services started" in probe_log.read_text(), 90, "probe worker", probe)
        yield Pipeline(ingest, probe.pid, env)
    finally:
        if probe is not None:
            processes.stop(probe, timeout_s=30)
        ingest.stop()


# --- the fixed-rate sender ----------------------------------------------------------------------------


@dataclass
class Slotted(Delivery):
    slot_at: float = 0.0  # when the schedule said to send it (time.monotonic)

    @property
    def late_s(self) -> float:
        return self.sent_at - self.slot_at


class FixedRateSender:
    """Sends `rate * duration_s` MinIO notifications, delivery n at t0 + n/rate, each in its own task.

    A delivery that starts more than one interval after its slot (the loop was busy, or `max_in_flight`
    answers were outstanding) counts as a missed slot; it is still sent, so the total stays fixed.
    """

    def __init__(
        self,
        base_url: str,
        rate: float,
        duration_s: float,
        make: Callable[[int], tuple[str, bytes, dict[str, str]]] = minio_put,
        max_in_flight: int = 64,
    ) -> None:
        self.base_url = base_url
        self.rate = rate
        self.total = round(rate * duration_s)
        self.make = make
        self.max_in_flight = max_in_flight
        self.deliveries: list[Slotted] = []
        self.started_at = 0.0

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate

    async def run(self) -> list[Slotted]:
        in_flight = asyncio.Semaphore(self.max_in_flight)
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=HOOK_TIMEOUT_S, limits=limits) as client:
            self.started_at = time.monotonic()
            for n in range(self.total):
                slot_at = self.started_at + n * self.interval_s
                if (wait := slot_at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await in_flight.acquire()
                delivery = Slotted(source="minio", sent_at=time.monotonic(), slot_at=slot_at)
                self.deliveries.append(delivery)
                task = asyncio.create_task(self._send(client, n, delivery, in_flight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        return self.deliveries

    async def _send(
        self, client: httpx.AsyncClient, n: int, delivery: Slotted, in_flight: asyncio.Semaphore
    ) -> None:
        path, body, headers = self.make(n)
        try:
            await webhook_traffic.post(client, delivery, path, body, headers)
        finally:
            in_flight.release()

    def missed(self) -> list[Slotted]:
        return [d for d in self.deliveries if d.late_s > self.interval_s]


# --- resident memory ----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler:
    """Samples each named process's RSS every `interval_s` from entry to exit, with seconds since entry."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = 1.0) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _sample(self) -> None:
        started = time.monotonic()
        while True:
            now = time.monotonic() - started
            for name, pid in self.pids.items():
                if (rss := rss_bytes(pid)) is not None:
                    self.samples[name].append((now, rss))
            next_at = started + (int(now / self.interval_s) + 1) * self.interval_s
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
                return
            except TimeoutError:
                pass

    def median(self, name: str, start_s: float, end_s: float) -> float:
        """Median RSS of `name` over samples taken in [start_s, end_s) seconds."""
        window = [rss for at, rss in self.samples[name] if start_s <= at < end_s]
        if not window:
            raise AssertionError(f"no RSS samples of {name} in [{start_s}, {end_s}) s")
        return statistics.median(window)

    def at(self, name: str, seconds: float) -> int:
        """The sample of `name` nearest to `seconds` after entry."""
        return min(self.samples[name], key=lambda sample: abs(sample[0] - seconds))[1]


@dataclass(frozen=True)
class MemoryFigures:
    """One process's RSS over the soak: samples at start, middle and end, and the late growth: median of
    the last third minus median of the middle third (the first third is warm-up)."""

    name: str
    start: int
    middle: int
    end: int
    middle_third_median: float
    last_third_median: float

    @property
    def growth(self) -> float:
        return self.last_third_median - self.middle_third_median

    def line(self) -> str:
        mb = 1024 * 1024
        return (
            f"{self.name:<8} start {self.start / mb:7.1f} MB   middle {self.middle / mb:7.1f} MB"
            f"   end {self.end / mb:7.1f} MB   late growth {self.growth / mb:+6.2f} MB"
        )


def memory_figures(sampler: RssSampler, duration_s: float) -> dict[str, MemoryFigures]:
    third = duration_s / 3
    return {
        name: MemoryFigures(
            name=name,
            start=sampler.at(name, 0),
            middle=sampler.at(name, duration_s / 2),
            end=sampler.at(name, duration_s),
            middle_third_median=sampler.median(name, third, 2 * third),
            last_third_median=sampler.median(name, 2 * third, duration_s + 1),
        )
        for name in sampler.pids
    }


# --- reading it all back ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Per accepted event id: copies in the ingest's journal, in the consumer's inbox and effects, and
    of the event the consumer emitted in reply; plus what went to the DLQ and what stayed unsent."""

    accepted: list[str]
    journal: Counter[str] = field(default_factory=Counter)
    inbox: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    on_the_bus: Counter[str] = field(default_factory=Counter)
    handled_at: dict[str, datetime] = field(default_factory=dict)
    unsent: int = 0  # outbox rows (journal or replies) never sent
    dead_letters: int = 0
    dlq_records: int = 0

    def not_once(self, where: str) -> dict[str, int]:
        """Accepted ids that are not exactly once in `where` (0: lost, 2+: doubled), and strays."""
        counts: Counter[str] = getattr(self, where)
        accepted = set(self.accepted)
        wrong = {i: counts[i] for i in self.accepted if counts[i] != 1}
        strays = {i: n for i, n in counts.items() if i not in accepted}
        return {**wrong, **strays}


def reply_id(event_id: str) -> str:
    """The id of the DataValidated the probe emits for `event_id` (its first emitted event)."""
    return events.derived_id(event_id, VALIDATED, "0")


async def handled_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(inbox.c.event_id).where(inbox.c.consumer_group == PROBE_GROUP))
        return {row.event_id for row in rows}


async def all_handled(engine: AsyncEngine, accepted: Sequence[str]) -> bool:
    """True once the probe has handled every accepted event and no outbox row waits."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
        )
    return waiting == 0 and set(accepted) <= await handled_ids(engine)


async def tally(engine: AsyncEngine, accepted: Sequence[str], ignore: frozenset[str] = frozenset()) -> Tally:
    """Count every copy of every event in the store; events caused by an id in `ignore` are left out."""
    found = Tally(list(accepted))
    causes = {reply_id(i): i for i in [*accepted, *ignore]}
    async with engine.connect() as conn:
        for row in await conn.execute(select(outbox.c.event_id, outbox.c.event_type, outbox.c.sent_at)):
            cause = causes.get(row.event_id, row.event_id)
            if cause in ignore:
                continue
            found.unsent += row.sent_at is None
            if row.event_type == ARRIVED:
                found.journal[row.event_id] += 1
            elif row.event_type == VALIDATED:
                found.replies[cause] += 1
        for row in await conn.execute(
            select(inbox.c.event_id, inbox.c.handled_at).where(inbox.c.consumer_group == PROBE_GROUP)
        ):
            if row.event_id not in ignore:
                found.inbox[row.event_id] += 1
                found.handled_at[row.event_id] = row.handled_at
        found.dead_letters = await conn.scalar(select(func.count()).select_from(dead_letters)) or 0
    found.effects = Counter(row.event_id for row in await effects.rows(engine) if row.event_id not in ignore)
    return found


async def warm_up(base_url: str, engine: AsyncEngine, timeout_s: float) -> str:
    """One delivery end to end before the clock starts, so that the soak's first events do not wait for
    the probe's consumer group to form (a join takes seconds); returns its event id."""
    path, body, headers = minio_put(0, prefix="wine_quality/warm-up-")
    async with httpx.AsyncClient(base_url=base_url, timeout=HOOK_TIMEOUT_S) as client:
        answer = await client.post(path, content=body, headers=headers)
    assert answer.status_code == 202, f"warm-up delivery answered {answer.status_code}: {answer.text}"
    event_id: str = answer.json()["events"][0]["id"]

    async def handled() -> bool:
        return event_id in await handled_ids(engine)

    await flows.eventually(handled, "the probe to handle the warm-up delivery", timeout_s)
    return event_id


# --- the soak -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class SoakResult:
    rate: float
    duration_s: float
    deliveries: list[Slotted]
    missed: list[Slotted]
    tally: Tally
    memory: dict[str, MemoryFigures]
    rss_samples: dict[str, list[tuple[float, int]]]
    wall_offset_s: float  # time.time() - time.monotonic() during the run
    drain_s: float  # from the last answer until everything was handled and sent (or the wait gave up)

    @property
    def accepted(self) -> list[Slotted]:
        return [d for d in self.deliveries if d.accepted]

    @property
    def sustained_rate(self) -> float:
        """Accepted deliveries per second from the first send to the last answer."""
        span = max(d.answered_at for d in self.deliveries) - min(d.sent_at for d in self.deliveries)
        return len(self.accepted) / span

    def answer_latencies_s(self) -> list[float]:
        return [d.answered_at - d.sent_at for d in self.accepted]

    def end_to_end_latencies_s(self) -> list[float]:
        """From the ingest's 2xx answer to the consumer's handling (its inbox row), per event."""
        latencies = []
        for delivery in self.accepted:
            accepted_wall = delivery.answered_at + self.wall_offset_s
            for event_id in delivery.event_ids:
                if (handled := self.tally.handled_at.get(event_id)) is not None:
                    latencies.append(handled.timestamp() - accepted_wall)
        return latencies

    def problems(self) -> list[str]:
        """Broken promises in a line each: refused deliveries, ids not exactly once, dead letters."""
        tally = self.tally
        counts = {
            "deliveries not answered 2xx": len(self.deliveries) - len(self.accepted),
            **{f"ids not exactly once in {where}": len(tally.not_once(where)) for where in COPIES},
            "outbox rows unsent": tally.unsent,
            "dead letters": tally.dead_letters,
            "records on the DLQ": tally.dlq_records,
        }
        problems = [f"{n} {what}" for what, n in counts.items() if n]
        refused = [d for d in self.deliveries if not d.accepted]
        if refused:
            problems.append(f"first refusal: {refused[0].status_code} {refused[0].error}")
        return problems

    def figures(self) -> dict[str, Any]:
        answers = self.answer_latencies_s()
        e2e = self.end_to_end_latencies_s()
        mb = 1024 * 1024
        return {
            "rate_per_s": self.rate,
            "duration_s": self.duration_s,
            "deliveries": len(self.deliveries),
            "accepted": len(self.accepted),
            "sustained_per_s": round(self.sustained_rate, 2),
            "missed_slots": len(self.missed),
            "latest_send_ms": round(max(d.late_s for d in self.deliveries) * 1000, 1),
            "answer_p50_ms": round(percentile(answers, 0.5) * 1000, 1),
            "answer_p99_ms": round(percentile(answers, 0.99) * 1000, 1),
            "e2e_p50_ms": round(percentile(e2e, 0.5) * 1000, 1) if e2e else None,
            "e2e_p99_ms": round(percentile(e2e, 0.99) * 1000, 1) if e2e else None,
            "events_checked": len(self.tally.accepted),
            "bus_copies_over_one": sum(n - 1 for n in self.tally.on_the_bus.values() if n > 1),
            "drain_s": round(self.drain_s, 2),
            **{
                f"rss_{name}_{at}_mb": round(getattr(m, at) / mb, 1)
                for name, m in self.memory.items()
                for at in ("start", "middle", "end")
            },
            **{f"rss_{name}_late_growth_mb": round(m.growth / mb, 2) for name, m in self.memory.items()},
        }


async def soak(
    line: Pipeline, rate: float, duration_s: float, bootstrap: str, drain_timeout_s: float = 60
) -> SoakResult:
    """Send at `rate` for `duration_s` while sampling RSS, wait until everything is handled, read it back."""
    namespace = line.env["MLCD_KAFKA_NAMESPACE"]
    tail = await TopicTail(bootstrap, [namespace + "mlcd.data", namespace + events.DLQ_TOPIC]).start()
    engine = create_engine(line.env["MLCD_DATABASE_URL"])
    try:
        warm_up_id = await warm_up(line.ingest.base_url, engine, drain_timeout_s)
        wall_offset_s = time.time() - time.monotonic()
        sender = FixedRateSender(line.ingest.base_url, rate, duration_s)
        async with RssSampler(line.pids) as sampler:
            deliveries = await sender.run()
        last_answer = max(d.answered_at for d in deliveries)
        accepted_ids = [i for d in deliveries if d.accepted for i in d.event_ids]

        async def done() -> bool:
            return await all_handled(engine, accepted_ids)

        async def tail_caught_up() -> bool:
            return {reply_id(i) for i in accepted_ids} <= tail.ids()

        # Whatever never arrives shows up in the tally as lost; waiting longer would not bring it.
        with contextlib.suppress(AssertionError):
            await flows.eventually(done, "the probe to handle every accepted event", drain_timeout_s)
        drain_s = time.monotonic() - last_answer
        found = await tally(engine, accepted_ids, ignore=frozenset({warm_up_id}))
        with contextlib.suppress(AssertionError):
            await flows.eventually(tail_caught_up, "the replies on the data topic", 10)
    finally:
        await tail.stop()
        await engine.dispose()
    found.on_the_bus = Counter(
        r.event_id
        for r in tail.records
        if r.headers.get("ce_type") == ARRIVED.encode() and r.event_id != warm_up_id
    )
    found.dlq_records = sum(1 for r in tail.records if r.topic.endswith(events.DLQ_TOPIC))
    return SoakResult(
        rate=rate,
        duration_s=duration_s,
        deliveries=deliveries,
        missed=sender.missed(),
        tally=found,
        memory=memory_figures(sampler, duration_s),
        rss_samples=sampler.samples,
        wall_offset_s=wall_offset_s,
        drain_s=drain_s,
    )
