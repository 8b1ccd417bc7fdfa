"""PostgreSQL stopped and started under webhook traffic, with `mlcd serve ingest` and a consumer service
(the probe worker, one effect row per handling) each in its own process on the real broker: ingest keeps
answering 2xx and stays ready (the broker makes deliveries durable), /status names the store while it is
down, both processes reconnect by themselves, and every accepted event is handled exactly once, none parked
on the DLQ for an infrastructure blip.

A store outage is not a handler failure: the consumer holds its batch with its partitions paused (polls
keep it in the group), costs no attempt, and handles the batch again once the store answers. The
in-process tests below pin that down: an outage inside a handler, and one between polls on the real
broker, where the consumer must not rejoin its group.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.runner import ServiceHost
from mlcd.store import migrate
from mlcd.store.database import create_engine
from mlcd.store.tables import dead_letters
from mlcd.store.unit_of_work import UnitOfWork
from tests.conftest import REPO, unique
from tests.support import effects, flows, processes
from tests.support.ingest_app import MINIO_TOKEN
from tests.support.mlcd_service import ServiceProcess
from tests.support.postgres_server import PostgresServer
from tests.support.webhook_traffic import Traffic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# PostgreSQL stays down until this many deliveries were answered meanwhile: about 10 s at one delivery per
# 0.2 s, and proof that ingest kept accepting all along.
OUTAGE_DELIVERIES = 50
STEADY_DELIVERIES = 10
HANDLER_S = 0.05


@pytest.fixture
def service_env(kafka_bootstrap: str, own_postgres: PostgresServer, tmp_path: Path) -> dict[str, str]:
    return {
        "MLCD_HOME": str(tmp_path / "home"),
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        "MLCD_DATABASE_URL": own_postgres.url,
        "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MLCD_KAFKA_NAMESPACE": unique("pg") + ".",
        "MLCD_KAFKA_SESSION_TIMEOUT_S": "6",
        "MLCD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
        "MLCD_MINIO_WEBHOOK_TOKEN": MINIO_TOKEN,
        # Short retries: an outage that burned them would park events on the DLQ within the test.
        "MLCD_HANDLER_MAX_ATTEMPTS": "3",
        "MLCD_HANDLER_BACKOFF_INITIAL_S": "0.1",
        "MLCD_HANDLER_BACKOFF_MAX_S": "0.5",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "services")]),
    }


@pytest.fixture
def ingest(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("ingest", service_env, tmp_path)
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
def worker(
    ingest: ServiceProcess, service_env: dict[str, str], tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The probe consumer (tests.support.worker), started once ingest has migrated the store."""
    log_path = tmp_path / "worker.log"
    # Each handling holds its transaction open a moment, so the outage catches one mid-handler.
    env = {**service_env, "WORKER_HANDLER_SECONDS": str(HANDLER_S)}
    process = processes.start([sys.executable, "-m", "tests.support.worker"], log_path, env, REPO)
    try:
        processes.wait_until(lambda: "services started" in log_path.read_text(), 60, "probe worker", process)
        yield process
    finally:
        processes.stop(process, timeout_s=30)


@pytest.fixture
async def store(own_postgres: PostgresServer) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(own_postgres.url)
    yield engine
    await engine.dispose()


def _store_problem(ingest: ServiceProcess) -> str | None:
    """The store as ingest's /status reports it (/readyz stays green while the broker takes deliveries)."""
    answer = httpx.get(f"{ingest.base_url}/status", timeout=15)
    problem: str | None = answer.json()["store"]
    return problem


async def _parked(store: AsyncEngine) -> int:
    """Dead letters in the store; 0 while it cannot be asked."""
    try:
        async with store.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(dead_letters)) or 0)
    except (OSError, SQLAlchemyError):
        return 0


async def _log_count(log: Path, text: str) -> int:
    return (await asyncio.to_thread(log.read_text)).count(text)


async def _next_handler_start(log: Path) -> None:
    """Return as soon as the worker starts handling another event."""
    seen = await _log_count(log, "probe handler started")

    async def started() -> bool:
        return await _log_count(log, "probe handler started") > seen

    await flows.eventually(started, "the worker to start handling an event", 30)


async def _handled(store: AsyncEngine) -> Counter[str]:
    try:
        return Counter(row.event_id for row in await effects.rows(store))
    except (OSError, SQLAlchemyError):  # the store may still be coming up; ask again
        return Counter()


async def _outage(
    mode: str,
    own_postgres: PostgresServer,
    ingest: ServiceProcess,
    worker_log: Path,
    store: AsyncEngine,
    traffic: Traffic,
) -> dict[str, object]:
    """Stop PostgreSQL (`mode`) while the worker is inside a handler, start it again once OUTAGE_DELIVERIES
    more deliveries were answered, and
    wait until ingest's store is ready and the worker has handled what was accepted meanwhile."""
    failures_before = await _log_count(worker_log, "handler failed")
    await _next_handler_start(worker_log)
    await asyncio.to_thread(own_postgres.stop, mode)
    stopped_at = time.monotonic()
    problem_while_down = await asyncio.to_thread(_store_problem, ingest)
    assert problem_while_down, f"while PostgreSQL is down ({mode} stop), /status names the store"
    readyz = await asyncio.to_thread(httpx.get, f"{ingest.base_url}/readyz", timeout=15)
    assert readyz.status_code == 200, f"ingest stays ready while the broker takes deliveries: {readyz.text}"
    await traffic.answered(OUTAGE_DELIVERIES, f"while PostgreSQL is down ({mode} stop)")
    await asyncio.to_thread(own_postgres.start)
    started_at = time.monotonic()

    async def store_ready() -> bool:
        return await asyncio.to_thread(_store_problem, ingest) is None

    await flows.eventually(store_ready, "ingest's /status to find the store again", 60)
    readyz_s = time.monotonic() - started_at
    during = {i for d in traffic.between(stopped_at, started_at) for i in d.event_ids}

    async def resumed() -> bool:
        return bool(during & set(await _handled(store)))

    async def caught_up() -> bool:
        return during <= set(await _handled(store))

    await flows.eventually(resumed, "the worker to handle events again", 60)
    resumed_s = time.monotonic() - started_at
    await flows.eventually(caught_up, "the worker to handle what was accepted meanwhile", 90)
    return {
        "mode": mode,
        "outage_s": round(started_at - stopped_at, 1),
        "accepted_during_outage": len(during),
        "handler_caught_mid_transaction": await _log_count(worker_log, "handler failed") > failures_before,
        "readyz_recovery_s": round(readyz_s, 2),
        "worker_resumed_s": round(resumed_s, 2),
        "worker_caught_up_s": round(time.monotonic() - started_at, 2),
    }


async def test_postgres_stopped_under_traffic_services_reconnect_and_handle_each_event_once(
    own_postgres: PostgresServer,
    ingest: ServiceProcess,
    worker: subprocess.Popen[bytes],
    store: AsyncEngine,
    record_property: Callable[[str, object], None],
) -> None:
    worker_log = Path(worker.log_path)  # type: ignore[attr-defined]
    outages: list[dict[str, object]] = []
    async with Traffic(ingest.base_url, ("minio",), interval_s=0.2) as traffic:
        await traffic.answered(STEADY_DELIVERIES, "before the outages")
        for mode in ("fast", "immediate"):
            outages.append(await _outage(mode, own_postgres, ingest, worker_log, store, traffic))
        await traffic.answered(STEADY_DELIVERIES, "after the outages")

    assert ingest.process is not None and ingest.process.poll() is None, "ingest ran through, not restarted"
    assert worker.poll() is None, "the worker ran through, not restarted"
    deliveries = traffic.deliveries
    refused = [d for d in deliveries if not d.accepted]
    assert not refused, f"{len(refused)} of {len(deliveries)} deliveries not answered 2xx: {refused[:3]}"
    accepted = [i for d in deliveries for i in d.event_ids]

    async def all_handled() -> bool:
        return set(accepted) <= set(await _handled(store))

    await flows.eventually(all_handled, "the worker to handle every accepted event", 60)
    handled = await _handled(store)
    assert set(handled) == set(accepted), "nothing handled that was not accepted"
    twice = {i: n for i, n in handled.items() if n > 1}
    assert not twice, f"events handled more than once: {twice}"
    assert await _parked(store) == 0, "a database outage parked events on the DLQ"

    record_property("deliveries", len(deliveries))
    for outage in outages:
        record_property(f"outage_{outage['mode']}", outage)
    print(f"postgres stopped twice, {len(deliveries)} deliveries: {outages}")


async def test_store_lost_inside_a_handler_pauses_the_event_instead_of_parking_it(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    outage: list[asyncio.Task[None]] = []

    async def handler(event: events.Envelope[events.DataArrived], uow: UnitOfWork) -> None:
        if not outage:  # the store goes away under the first handling, as a crash of the server would
            await asyncio.to_thread(own_postgres.stop, "immediate")
            outage.append(asyncio.create_task(restart_once_the_attempt_failed()))
        await effects.write_handled(uow, event)

    spec = ServiceSpec("probe", {events.DataArrived: [handler]})

    async def restart_once_the_attempt_failed() -> None:
        async def batch_held() -> bool:
            return REGISTRY.get_sample_value("mlcd_consumer_held", {"group": spec.group}) == 1.0

        await flows.eventually(batch_held, "the consumer to hold its batch with the store gone", 60)
        await asyncio.to_thread(own_postgres.start)

    settings = Settings.model_validate(
        {
            "home": tmp_path,
            "database_url": own_postgres.url,
            "handler_max_attempts": 2,
            "handler_backoff_initial_s": 0.05,
        }
    )
    host = ServiceHost(
        settings,
        [spec],
        {},
        bus=MemoryBus(events.TOPICS),
        engine=create_engine(settings.effective_database_url),
    )
    await host.start()
    await effects.create(host.engine)
    event = flows.arrived()
    try:
        await flows.publish(host.bus, event)

        async def handled_once() -> bool:
            assert await _parked(host.engine) == 0, "the outage burned the event's attempts and parked it"
            return bool(outage) and outage[0].done() and [*(await _handled(host.engine))] == [event.id]

        await flows.eventually(handled_once, "the event handled after the store came back", 60)
        assert (await _handled(host.engine))[event.id] == 1
        assert await _parked(host.engine) == 0
    finally:
        await host.stop()
        await asyncio.gather(*outage)


class _CountingBus:
    """The real broker, counting group joins: a consumer that rejoins subscribes again."""

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        self.subscriptions = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def subscribe(self, group: str, topics: Any) -> Any:
        self.subscriptions += 1
        return await self._bus.subscribe(group, topics)


async def test_a_store_outage_holds_the_batch_and_keeps_the_consumer_in_its_group(
    own_postgres: PostgresServer, kafka_bootstrap: str
) -> None:
    engine = create_engine(own_postgres.url)
    real = KafkaBus(
        kafka_bootstrap,
        events.TOPICS,
        namespace=unique("hold") + ".",
        session_timeout_s=6,
        heartbeat_interval_s=1,
    )
    bus = _CountingBus(real)
    await real.start()
    try:
        await migrate.upgrade(engine)
        await effects.create(engine)

        async def write(event: events.Envelope[events.DataArrived], uow: UnitOfWork) -> None:
            await effects.write_handled(uow, event)

        consumer = flows.consumer(bus, engine, [write], group=unique("mlcd-hold"))
        async with flows.running(consumer):
            await asyncio.wait_for(consumer.ready.wait(), 60)
            await asyncio.to_thread(own_postgres.stop, "fast")
            event = flows.arrived()
            await flows.publish(real, event)

            async def held() -> bool:
                return REGISTRY.get_sample_value("mlcd_consumer_held", {"group": consumer.group}) == 1.0

            await flows.eventually(held, "the consumer to hold the batch while the store is down", 60)
            await asyncio.to_thread(own_postgres.start)

            async def handled() -> bool:
                return [r.event_id for r in await effects.rows(engine)] == [event.id]

            await flows.eventually(handled, "the held event handled once the store answers", 60)
        assert bus.subscriptions == 1, "the outage cost a group rejoin"
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(dead_letters)) == 0
    finally:
        await real.stop()
        await engine.dispose()
