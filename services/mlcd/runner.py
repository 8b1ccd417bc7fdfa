"""The life of a service process (`mlcd serve SERVICE`, `mlcd up`): store, bus, consumers, relay, timers.

`ServiceHost` owns every task it starts. A stop (SIGTERM, SIGINT or `stop()`) lets each consumer finish
and commit the batch in hand, stops the timers, lets the relay flush the outbox, then closes the bus and
the store.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, logs
from mlcd.bus import runtime
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import Bus
from mlcd.bus.service import ServiceSpec, Timer, bind
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable
from mlcd.store import database, migrate

log = logs.get(__name__)

_RESTART_DELAY_S = 1.0
_RECONNECT_DELAY_S = 2.0


def build_bus(settings: Settings) -> Bus:
    """The real broker when `MLCD_KAFKA_BOOTSTRAP` is set, else the in-process bus."""
    if settings.kafka_bootstrap:
        return KafkaBus(
            settings.kafka_bootstrap,
            events.TOPICS,
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            enable_idempotence=settings.kafka_enable_idempotence,
            request_timeout_s=settings.kafka_request_timeout_s,
            namespace=settings.kafka_namespace,
            session_timeout_s=settings.kafka_session_timeout_s,
            heartbeat_interval_s=settings.kafka_heartbeat_interval_s,
        )
    return MemoryBus(events.TOPICS, partitions=settings.kafka_partitions)


def retry_policy(settings: Settings) -> runtime.RetryPolicy:
    return runtime.RetryPolicy(
        max_attempts=settings.handler_max_attempts,
        initial_s=settings.handler_backoff_initial_s,
        max_s=settings.handler_backoff_max_s,
    )


async def readiness(bus: Bus, engine: AsyncEngine, timeout_s: float = 5.0) -> dict[str, str | None]:
    """Each part (`bus`, `store`) mapped to why it is not reachable, or None when it answers."""

    async def store_answers() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    parts: dict[str, Callable[[], Awaitable[None]]] = {"bus": bus.ping, "store": store_answers}
    outcome: dict[str, str | None] = {}
    for name, check in parts.items():
        try:
            await asyncio.wait_for(check(), timeout_s)
            outcome[name] = None
        except TimeoutError:
            outcome[name] = f"no answer within {timeout_s:g}s"
        except Exception as e:  # readiness reports any failure by name instead of raising it
            outcome[name] = f"{type(e).__name__}: {e}"
    return outcome


class ServiceHost:
    """Runs the consumers, timers and outbox relay of some services against one store and one bus.

    `engine`, `bus` and `waker` are public so the HTTP app of the same process shares them.
    """

    def __init__(
        self,
        settings: Settings,
        services: Sequence[ServiceSpec],
        ports: Mapping[str, Any],
        *,
        bus: Bus | None = None,
        engine: AsyncEngine | None = None,
        drain_timeout_s: float = 25.0,
        max_batch: int = 100,
    ) -> None:
        self.settings = settings
        self.services = list(services)
        self.ports: dict[str, Any] = {"settings": settings, **ports}
        self.engine = engine or database.create_engine(settings.effective_database_url)
        self.bus = bus or build_bus(settings)
        self.waker = runtime.RelayWaker()
        self.drain_timeout_s = drain_timeout_s
        self.max_batch = max_batch
        self.consumers: list[runtime.Consumer] = []
        self.relay = runtime.OutboxRelay(
            self.engine,
            self.bus,
            waker=self.waker,
            retention=timedelta(days=settings.event_retention_days),
        )
        self._work_stop = asyncio.Event()
        self._relay_stop = asyncio.Event()
        self._signalled = asyncio.Event()
        self._work: list[asyncio.Task[None]] = []
        self._relay_task: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Migrate the store, start the timers, and once the bus answers, the consumers and the relay.

        A broker that is down at start-up holds back only the consumers and the relay (readiness names
        it); what the process writes to the outbox meanwhile is published when the broker answers.
        """
        if self.settings.database_url is None:
            self.settings.home.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade(self.engine)
        self._started = True
        self.consumers = [self._consumer(spec) for spec in self.services if spec.handlers]
        for spec in self.services:
            for timer in spec.timers:
                self._work.append(
                    asyncio.create_task(self._tick_forever(spec, timer), name=f"{spec.name}:{timer.name}")
                )
        try:
            await self.bus.start()
        except AdapterUnavailable as e:
            log.warning("bus unavailable; consumers and relay start when it answers", error=str(e))
            self._work.append(asyncio.create_task(self._connect_then_consume(), name="bus-connect"))
            return
        self._start_consuming()
        await self._until_subscribed()
        log.info("services started", services=[s.name for s in self.services])

    def _start_consuming(self) -> None:
        for consumer in self.consumers:
            self._work.append(asyncio.create_task(self._keep_consuming(consumer), name=consumer.group))
        self._relay_task = asyncio.create_task(self._keep_relaying(), name="outbox-relay")

    async def _connect_then_consume(self) -> None:
        while not await self._pause(self._work_stop, _RECONNECT_DELAY_S):
            try:
                await self.bus.start()
            except AdapterUnavailable as e:
                log.warning("bus still unavailable", error=str(e))
                continue
            if not self._work_stop.is_set():
                self._start_consuming()
                log.info("bus answered; services started", services=[s.name for s in self.services])
            return

    async def stop(self) -> None:
        """Drain: finish and commit the batches in hand, flush the outbox, then close bus and store."""
        if not self._started:
            return
        self._started = False
        self._work_stop.set()
        await self._finish(self._work)
        self._relay_stop.set()
        if self._relay_task is not None:
            await self._finish([self._relay_task])
        await self.bus.stop()
        await self.engine.dispose()
        log.info("services stopped", services=[s.name for s in self.services])

    async def run_until_signalled(self) -> int:
        """Start, run until SIGTERM or SIGINT, drain and stop; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled.set)
        try:
            await self.start()
            await self._signalled.wait()
            log.info("stop signal received; draining")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        return 0

    def request_stop(self) -> None:
        """Ask `run_until_signalled` to drain and return, as a signal would."""
        self._signalled.set()

    async def readiness(self) -> dict[str, str | None]:
        return await readiness(self.bus, self.engine)

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

    async def _until_subscribed(self) -> None:
        waiting = [asyncio.create_task(c.ready.wait()) for c in self.consumers]
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self.settings.kafka_request_timeout_s * 2)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _keep_consuming(self, consumer: runtime.Consumer) -> None:
        # A consumer that fails outside a handler (store or broker gone) rejoins after a pause; what it
        # had not committed is redelivered and the inbox keeps the second handling a no-op.
        while not self._work_stop.is_set():
            try:
                await consumer.run(self._work_stop)
            except Exception:  # whatever broke the loop, the consumer must come back; it is logged
                log.exception("consumer failed; rejoining", group=consumer.group)
                await self._pause(self._work_stop)

    async def _keep_relaying(self) -> None:
        while not self._relay_stop.is_set():
            try:
                await self.relay.run(self._relay_stop)
            except Exception:  # the relay must outlive any failure; rows stay in the outbox meanwhile
                log.exception("outbox relay failed; restarting")
                await self._pause(self._relay_stop)

    async def _tick_forever(self, spec: ServiceSpec, timer: Timer) -> None:
        tick = bind(timer.run, self.ports)
        while not await self._pause(self._work_stop, timer.interval_s):
            with logs.bound(service=spec.name, timer=timer.name):
                try:
                    async with runtime.unit_of_work(self.engine, spec.source, self.waker) as uow:
                        await tick(uow)
                except Exception:  # one failed tick must not stop the timer; the next tick retries
                    log.exception("timer tick failed")

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float = _RESTART_DELAY_S) -> bool:
        """Sleep unless `stop` is set first; True when stopping."""
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _finish(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        for task in late:
            log.warning("did not drain in time; cancelled", task=task.get_name())
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
