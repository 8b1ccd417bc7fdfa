"""Scale-out: one consumer and its relay against two of each, each pair in its own process; RSS of each.

Starts a Tansu broker and a fresh PostgreSQL database, then for 1 and then 2 worker processes (each a
service process's consumer plus its outbox relay, the same group, inbox + outbox on the shared
database), floods N events (default 5,000, 16 models over 4 partitions) and waits until the events
the handlers emitted are all relayed. Prints, per process count, the rate from the first publish to the
last emitted event read back (handled and relayed), the ratio of two to one, and each worker's RSS idle
(before the flood) and its peak during the flood. Done means every emitted event is marked sent in the
outbox (acknowledged by the broker), polled every 50 ms. The store starts with a running system's history
(`bus.store_history`).

    .venv/bin/python benchmarks/scale_out.py [--events 5000] [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bus as bench  # noqa: E402 - the broker, the database and the events of the bus benchmark


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- one worker process ------------------------------------------------------------------------------


async def worker(bootstrap: str, store_url: str, namespace: str) -> None:
    from mlcd import events, logs
    from mlcd.bus import runtime
    from mlcd.bus.kafka import KafkaBus
    from mlcd.config import Settings
    from mlcd.store import database
    from mlcd.store.unit_of_work import UnitOfWork

    logs.configure("INFO", stream=open(os.devnull, "w"))  # noqa: ASYNC230, SIM115 - as a service logs
    settings = Settings()

    async def validate(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        data = event.data
        uow.emit(
            events.DataValidated(model=data.model, uri=data.uri, rows=1, suite="bench", result_uri=data.uri)
        )

    engine = database.create_engine(store_url)
    # A runtime from before the setting has aiokafka's 500 ms.
    tuning = {"fetch_max_wait_ms": getattr(settings, "kafka_fetch_max_wait_ms", 500)}
    if "fetch_max_wait_ms" not in inspect.signature(KafkaBus).parameters:
        tuning = {}
    bus = KafkaBus(bootstrap, events.TOPICS, partitions=bench.PARTITIONS, namespace=namespace, **tuning)
    await bus.start()
    waker = runtime.RelayWaker()
    consumer = runtime.Consumer(
        bus=bus,
        engine=engine,
        group="mlcd-bench",
        handlers={events.DataArrived.type: [validate]},
        source="mlcd/bench",
        waker=waker,
    )
    relay = runtime.OutboxRelay(engine, bus, waker=waker)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(relay.run(stop))]
    assigned = -1
    while not stop.is_set():
        subscription = consumer._subscription
        now = len(subscription._consumer.assignment()) if subscription is not None else 0  # type: ignore[attr-defined]
        if now != assigned:
            assigned = now
            print(f"assigned {now}", flush=True)
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    await bus.stop()
    await engine.dispose()


# --- the parent --------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, bootstrap: str, store_url: str, namespace: str) -> None:
        argv = [sys.executable, __file__, "--worker", bootstrap, store_url, namespace]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.assigned = 0

    async def read_lines(self) -> None:
        assert self.process.stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, self.process.stdout.readline)
            if not line:
                return
            if line.startswith("assigned "):
                self.assigned = int(line.split()[1])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def measure(bootstrap: str, store_url: str, count: int, processes: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from mlcd import events
    from mlcd.bus.kafka import KafkaBus
    from mlcd.store import database
    from mlcd.store.tables import outbox

    namespace = f"scale{uuid.uuid4().hex[:6]}."
    publisher = KafkaBus(bootstrap, events.TOPICS, partitions=bench.PARTITIONS, namespace=namespace)
    await publisher.start()
    engine = database.create_engine(store_url)
    workers = [Worker(bootstrap, store_url, namespace) for _ in range(processes)]
    readers = [asyncio.create_task(w.read_lines()) for w in workers]

    async with engine.connect() as conn:
        before = int(await conn.scalar(select(func.max(outbox.c.seq))) or 0)

    async def relayed() -> int:
        # Emitted events marked sent: handled by a consumer, then acknowledged by the broker to a relay.
        # Only this run's rows are counted (a primary-key range), not the store's history.
        async with engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).where(outbox.c.seq > before, outbox.c.sent_at.is_not(None))
                )
                or 0
            )

    try:
        deadline = time.monotonic() + 90
        while not (sum(w.assigned for w in workers) == bench.PARTITIONS and all(w.assigned for w in workers)):
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not share the partitions")
            await asyncio.sleep(0.1)
        base = await relayed()
        warmup = bench._envelopes(bench.PARTITIONS * 8, f"warmup{processes}")
        await publisher.publish([events.encode(e) for e in warmup])
        deadline = time.monotonic() + 90
        while await relayed() < base + len(warmup):
            if time.monotonic() > deadline:
                raise TimeoutError("the warm-up was not handled and relayed")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        idle = [rss_mb(w.process.pid) for w in workers]
        peak = list(idle)
        base = await relayed()
        records = [events.encode(e) for e in bench._envelopes(count, f"flood{processes}")]
        started = time.perf_counter()
        for start in range(0, count, bench.CHUNK):
            await publisher.publish(records[start : start + bench.CHUNK])
        while await relayed() < base + count:
            peak = [max(p, rss_mb(w.process.pid)) for p, w in zip(peak, workers, strict=True)]
            if time.perf_counter() - started > 300:
                raise TimeoutError(f"{await relayed() - base} of {count} relayed")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*readers, return_exceptions=True)
        await publisher.stop()
        await engine.dispose()
    return {"processes": processes, "rate": count / seconds, "seconds": seconds, "idle": idle, "peak": peak}


async def main(count: int, pg_dsn: str, history: int) -> None:
    from mlcd.store import database, migrate

    with (
        tempfile.TemporaryDirectory() as folder,
        bench.tansu(Path(folder)) as bootstrap,
        bench.postgres_database(pg_dsn) as url,
    ):
        engine = database.create_engine(url)
        await migrate.upgrade(engine)
        await bench.store_history(engine, history, "mlcd-bench")
        await engine.dispose()
        results = [await measure(bootstrap, url, count, n) for n in (1, 2)]
    print(
        f"scale-out: {count} events, {bench.PARTITIONS} partitions, consumer + relay per process, "
        f"{history:,} events of history in the store"
    )
    for r in results:
        print(
            f"  {r['processes']} process(es): {r['rate']:>7,.0f} events/s handled and relayed "
            f"({r['seconds']:.2f} s); RSS idle "
            + ", ".join(f"{mb:.1f} MB" for mb in r["idle"])
            + "; peak under the flood "
            + ", ".join(f"{mb:.1f} MB" for mb in r["peak"])
        )
    print(f"  ratio two/one: {results[1]['rate'] / results[0]['rate']:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(*sys.argv[2:5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--history", type=int, default=50_000, help="as bus.py's (0: a fresh store)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.pg, arguments.history))
