"""The life of a service process (`mlcd serve SERVICE`, `mlcd up`): its workers over one store and one bus.

`ServiceHost` turns the services it hosts into supervised workers (a consumer per service, its timers,
the outbox relay, and any companions such as the raw-delivery consumer), migrates the store at start and
drains on stop: every worker finishes and commits what it holds, then the relay flushes the outbox, then
bus and store close. A broker that is down at start holds back only the workers that need it; each
retries under the supervisor and readiness names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import logs
from mlcd.bus import runtime
from mlcd.bus.port import Bus
from mlcd.bus.service import ServiceSpec, Timer, bind
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, MlcdError
from mlcd.store import database, migrate
from mlcd.store.unit_of_work import UnitOfWork
from mlcd.supervisor import Supervisor, Worker

log = logs.get(__name__)


def retry_policy(settings: Settings) -> runtime.RetryPolicy:
    return runtime.RetryPolicy(
        max_attempts=settings.handler_max_attempts,
        initial_s=settings.handler_backoff_initial_s,
        max_s=settings.handler_backoff_max_s,
    )


class ServiceHost:
    """Runs the consumers, timers, relay and companions of some services, all supervised.

    The composition root hands it the store's engine and the bus; `engine`, `bus` and `waker` are public so
    the HTTP app of the same process shares them. It owns them from then on: `stop` closes both.
    """

    def __init__(
        self,
        settings: Settings,
        services: Sequence[ServiceSpec],
        ports: Mapping[str, Any],
        *,
        bus: Bus,
        engine: AsyncEngine,
        drain_timeout_s: float = 25.0,
        max_batch: int = runtime.MAX_BATCH,
    ) -> None:
        self.settings = settings
        self.services = list(services)
        self.ports: dict[str, Any] = {"settings": settings, **ports}
        self.engine = engine
        self.bus = bus
        self.waker = runtime.RelayWaker()
        self.max_batch = max_batch
        self.relay = runtime.OutboxRelay(
            self.engine,
            self.bus,
            waker=self.waker,
            retention=timedelta(days=settings.event_retention_days),
        )
        self.consumers = [self._consumer(spec) for spec in self.services if spec.handlers]
        workers = [Worker(c.group, self._consuming(c)) for c in self.consumers]
        workers += [
            Worker(f"{spec.name}:{timer.name}", self._ticking(spec, timer))
            for spec in self.services
            for timer in spec.timers
        ]
        workers.append(Worker("outbox-relay", self._relaying, drains_last=True))
        self.supervisor = Supervisor(workers, drain_timeout_s=drain_timeout_s)
        self._started = False

    def supervise(self, worker: Worker) -> None:
        """Run a companion (the raw-delivery consumer, a folder watcher) under the same supervisor."""
        self.supervisor.add(worker)

    async def start(self) -> None:
        """Migrate the store, start every worker, and wait (bounded) until the consumers subscribed."""
        if self.settings.database_url is None:
            self.settings.home.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade(self.engine)
        self._started = True
        try:
            await self.bus.start()
        except AdapterUnavailable as e:
            log.warning("bus unavailable; its workers start when it answers", error=str(e))
            self.supervisor.start()
            return
        self.supervisor.start()
        await self._until_subscribed()
        log.info("services started", services=[s.name for s in self.services])

    async def stop(self) -> None:
        """Drain: finish and commit the batches in hand, flush the outbox, then close bus and store."""
        if not self._started:
            return
        self._started = False
        await self.supervisor.stop()
        await self.bus.stop()
        await self.engine.dispose()
        log.info("services stopped", services=[s.name for s in self.services])

    async def readiness(self) -> dict[str, str | None]:
        """Ready means it can do its job: the store answers and every consumer is subscribed."""
        parts: dict[str, str | None] = {"store": await _store_problem(self.engine)}
        health = self.supervisor.health()
        for consumer in self.consumers:
            parts[consumer.group] = (
                None if consumer.ready.is_set() else health.get(consumer.group) or ("not subscribed yet")
            )
        return parts

    async def delivery_readiness(self) -> dict[str, str | None]:
        """Ingest's readiness: a delivery can be made durable, by the broker or else the store's outbox."""
        store = await _store_problem(self.engine)
        if store is None:
            return {"delivery": None}
        bus = await _bus_problem(self.bus)
        return {"delivery": None if bus is None else f"neither the store ({store}) nor the broker ({bus})"}

    async def connections(self) -> dict[str, str | None]:
        """The store and the bus, each mapped to why it does not answer, or None (for `/status`)."""
        return {"store": await _store_problem(self.engine), "bus": await _bus_problem(self.bus)}

    def _consumer(self, spec: ServiceSpec) -> runtime.Consumer:
        handlers = {
            payload.type: [bind(handler, self.ports) for handler in chain]
            for payload, chain in spec.handlers.items()
        }
        return runtime.Consumer(
            bus=self.bus,
            engine=self.engine,
            group=spec.group,
            handlers=handlers,
            source=spec.source,
            retry=retry_policy(self.settings),
            waker=self.waker,
            max_batch=self.max_batch,
        )

    def _consuming(self, consumer: runtime.Consumer) -> Any:
        async def run(stop: asyncio.Event) -> None:
            await self.bus.start()
            await consumer.run(stop)

        return run

    async def _relaying(self, stop: asyncio.Event) -> None:
        await self.bus.start()
        await self.relay.run(stop)

    def _ticking(self, spec: ServiceSpec, timer: Timer) -> Any:
        tick = bind(timer.run, self.ports)

        async def run(stop: asyncio.Event) -> None:
            while not await _stopping(stop, timer.interval_s):
                with logs.bound(service=spec.name, timer=timer.name):
                    uow = UnitOfWork(self.engine, spec.source, on_commit=self.waker.wake)
                    try:
                        await tick(uow)
                        await uow.finish()  # events the tick emitted outside a block of its own
                    except MlcdError as e:  # one failed tick must not stop the timer; the next retries
                        log.warning("timer tick failed", error=f"{type(e).__name__}: {e}")
                    except Exception:  # likewise, with the traceback: this one is a fault of mlcd
                        log.exception("timer tick failed")

        return run

    async def _until_subscribed(self) -> None:
        waiting = [asyncio.create_task(c.ready.wait()) for c in self.consumers]
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self.settings.kafka_request_timeout_s * 2)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _stopping(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _store_problem(engine: AsyncEngine) -> str | None:
    return await database.problem(engine)


async def _bus_problem(bus: Bus, timeout_s: float = 5.0) -> str | None:
    try:
        await asyncio.wait_for(bus.ping(), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except MlcdError as e:
        return str(e)
    return None
