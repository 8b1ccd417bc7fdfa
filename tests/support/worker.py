"""A real service process for crash and shutdown tests: `python -m tests.support.worker`.

It runs `mlcd.runner.ServiceHost` through `mlcd.process.run`, as `mlcd serve` does, from the MLCD_*
environment with one service, "probe", whose handler writes a row to `test_effects` for each DataArrived
and emits a DataValidated. Faults, by environment:
WORKER_FAULT=kill_before_offset_commit  SIGKILL itself after the batch's transaction, before the offsets;
WORKER_FAULT=kill_before_publish        SIGKILL itself when the relay is about to publish an event;
WORKER_HANDLER_SECONDS=N                the handler logs "probe handler started", then takes N seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from mlcd import bootstrap, events, logs, process
from mlcd.bus.port import Bus, Subscription
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.events import Record
from mlcd.runner import ServiceHost
from mlcd.store import database
from mlcd.store.unit_of_work import UnitOfWork
from tests.support import effects

WORKER = f"worker-{os.getpid()}"
log = logs.get("probe")


async def on_data_arrived(event: events.Envelope[events.DataArrived], uow: UnitOfWork) -> None:
    seconds = float(os.environ.get("WORKER_HANDLER_SECONDS", "0"))
    if seconds:
        log.info("probe handler started", seconds=seconds)
        await asyncio.sleep(seconds)
    data = event.data
    validated = events.DataValidated(model=data.model, uri=data.uri, rows=1, suite="p", result_uri=data.uri)
    uow.emit(validated)
    await effects.write_handled(uow, event, WORKER)


PROBE = ServiceSpec("probe", {events.DataArrived: [on_data_arrived]})


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _SubscriptionDyingOnCommit:
    def __init__(self, inner: Subscription) -> None:
        self._inner = inner

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return await self._inner.poll(max_records, timeout_s)

    async def commit(self, records: Sequence[Record]) -> None:
        if records:
            _die()
        await self._inner.commit(records)

    def lag(self) -> dict[tuple[str, int], int]:
        return self._inner.lag()

    async def close(self) -> None:
        await self._inner.close()


class _FaultyBus:
    """The configured bus with one crash point added."""

    def __init__(self, inner: Bus, fault: str) -> None:
        self._inner = inner
        self._fault = fault

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def ping(self) -> None:
        await self._inner.ping()

    async def publish(self, records: Sequence[Record]) -> None:
        if self._fault == "kill_before_publish" and any(r.topic != events.DLQ_TOPIC for r in records):
            _die()
        await self._inner.publish(records)

    async def subscribe(self, group: str, topics: Sequence[str]) -> Any:
        subscription = await self._inner.subscribe(group, topics)
        if self._fault == "kill_before_offset_commit":
            return _SubscriptionDyingOnCommit(subscription)
        return subscription


async def main() -> int:
    settings = Settings()
    logs.configure("INFO")
    bus = _FaultyBus(bootstrap.build_bus(settings), os.environ.get("WORKER_FAULT", ""))
    host = ServiceHost(
        settings, [PROBE], {}, bus=bus, engine=database.create_engine(settings.effective_database_url)
    )
    await effects.create(host.engine)
    return await process.run(lambda: bootstrap.System(settings, host))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
