"""Deliveries of one event arriving at the same moment publish it once, on one ingest and across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.memory import MemoryBus
from mlcd.ingest.publisher import Publisher, Status
from mlcd.store import migrate
from mlcd.store import outbox as outbox_store
from mlcd.store.database import create_engine
from mlcd.store.tables import outbox


class CountingBus(MemoryBus):
    """The in-process bus, counting every record handed to it and yielding inside each publish."""

    def __init__(self) -> None:
        super().__init__(events.TOPICS)
        self.ids: list[str | None] = []

    async def publish(self, records: Sequence[events.Record]) -> None:
        await asyncio.sleep(0)  # a broker round trip: other deliveries run meanwhile
        self.ids += [r.header("ce_id") for r in records]
        await super().publish(records)


def _push() -> events.Envelope[events.Payload]:
    data = events.DataArrived(
        model="wine_quality", bucket="landing", key="k.csv", uri="s3://landing/k.csv", size=10
    )
    return events.new_event(data, source="test/concurrent", id=events.event_id("test", "same-delivery"))


async def _journal_rows(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(outbox).where(outbox.c.event_id == event_id)
        return int((await conn.execute(query)).scalar_one())


async def test_simultaneous_deliveries_to_one_ingest_publish_once(engine: AsyncEngine) -> None:
    bus = CountingBus()
    publisher = Publisher(bus, engine)
    envelope = _push()

    outcomes = await asyncio.gather(*(publisher.deliver([envelope]) for _ in range(8)))

    assert sorted(o.status for o in outcomes) == [Status.DUPLICATE] * 7 + [Status.PUBLISHED]
    assert bus.ids == [envelope.id]
    assert await _journal_rows(engine, envelope.id) == 1


async def test_simultaneous_deliveries_to_two_ingest_replicas_publish_once(pg_url: str) -> None:
    """Replicas share PostgreSQL (the embedded SQLite store serves one process)."""
    engines = [create_engine(pg_url), create_engine(pg_url)]
    await migrate.upgrade(engines[0])
    bus = CountingBus()
    replicas = [Publisher(bus, engine) for engine in engines]
    envelope = _push()
    try:
        for engine in engines:  # both pools connected, so neither replica starts late
            await _journal_rows(engine, envelope.id)
        outcomes = await asyncio.gather(*(replicas[i % 2].deliver([envelope]) for i in range(8)))
        assert [o.status for o in outcomes].count(Status.PUBLISHED) == 1
        assert bus.ids == [envelope.id]
        assert await _journal_rows(engines[0], envelope.id) == 1
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_journal_write_that_fails_after_the_broker_took_the_event_is_retried(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the delivery's time limit can run out after the broker answered: the event
    is journaled all the same, so its redelivery is known and not published twice."""
    write = outbox_store.add
    failures = iter([OperationalError("INSERT INTO outbox", None, TimeoutError("time limit"))])

    async def add_failing_once(*args: Any, **kwargs: Any) -> None:
        if failure := next(failures, None):
            raise failure
        await write(*args, **kwargs)

    monkeypatch.setattr(outbox_store, "add", add_failing_once)
    bus = CountingBus()
    publisher = Publisher(bus, engine)
    envelope = _push()

    assert (await publisher.deliver([envelope])).status is Status.PUBLISHED
    assert await _journal_rows(engine, envelope.id) == 1
    assert (await publisher.deliver([envelope])).status is Status.DUPLICATE
    assert bus.ids == [envelope.id]
