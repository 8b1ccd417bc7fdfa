"""Building blocks for runtime tests: events to publish, consumers to run, conditions to wait for."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from mlcd import events
from mlcd.bus import runtime
from mlcd.events import Record

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = runtime.RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.05)


def arrived(
    model: str = "wine_quality", key: str = "batch-1.csv", id: str | None = None
) -> events.Envelope[Any]:
    data = events.DataArrived(model=model, bucket="landing", key=key, uri=f"s3://landing/{key}", size=10)
    return events.new_event(data, source="mlcd/test", id=id or events.event_id("test", model, key))


async def publish(bus: Any, *envelopes: events.Envelope[Any]) -> None:
    await bus.publish([events.encode(e) for e in envelopes])


def consumer(
    bus: Any,
    engine: Any,
    handlers: Sequence[runtime.Handler],
    *,
    group: str = "mlcd-probe",
    retry: runtime.RetryPolicy = FAST_RETRY,
    waker: runtime.RelayWaker | None = None,
) -> runtime.Consumer:
    return runtime.Consumer(
        bus=bus,
        engine=engine,
        group=group,
        handlers={events.DataArrived.type: list(handlers)},
        source="mlcd/probe",
        retry=retry,
        waker=waker,
    )


@asynccontextmanager
async def running(*parts: Any) -> AsyncIterator[asyncio.Event]:
    """Run each part's `run(stop)` as a task; on exit stop them and wait for them to finish."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(part.run(stop)) for part in parts]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout_s: float = 30) -> T:
    """Ask `check` every 50 ms until its answer is truthy and return that answer; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not (answer := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
    return answer


class Reader:
    """A test's own consumer group on some topics, collecting everything that arrives."""

    def __init__(self, bus: Any, topics: Sequence[str], group: str = "test-reader") -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.records: list[Record] = []
        self._subscription: Any = None

    async def start(self) -> Reader:
        self._subscription = await self.bus.subscribe(self.group, list(self.topics))
        return self

    async def collect(self) -> list[Record]:
        """Everything that arrived so far, each record once (a rejoin may deliver it again)."""
        seen = {(r.topic, r.partition, r.offset) for r in self.records}
        for record in await self._subscription.poll(500, 0.2):
            if (record.topic, record.partition, record.offset) not in seen:
                seen.add((record.topic, record.partition, record.offset))
                self.records.append(record)
        return self.records

    def of_type(self, type_name: str) -> list[Record]:
        return [r for r in self.records if r.header("ce_type") == type_name]

    async def close(self) -> None:
        await self._subscription.close()


async def mlcd_command(group: str, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `mlcd <group> <args>` as its own process (the command module's typer app) against `env`.

    Returns (exit code, stdout, stderr).
    """
    program = f"from mlcd.commands.{group} import app; app(prog_name='mlcd {group}')"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        *args,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode(), err.decode()
