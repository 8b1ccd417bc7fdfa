"""Ingest's publisher passes store connections between overlapping deliveries and keeps none when idle."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from mlcd import events
from mlcd.bus.memory import MemoryBus
from mlcd.ingest.publisher import Publisher, Status


class YieldingBus(MemoryBus):
    """The in-process bus, letting other deliveries run during each publish as a broker round trip would."""

    def __init__(self) -> None:
        super().__init__(events.TOPICS)

    async def publish(self, records: Sequence[events.Record]) -> None:
        await asyncio.sleep(0)
        await super().publish(records)


def _arrivals(count: int) -> list[events.Envelope[events.Payload]]:
    return [
        events.new_event(
            events.DataArrived(
                model=f"m{i}", bucket="landing", key=f"{i}.csv", uri=f"s3://landing/{i}.csv", size=1
            ),
            source="test/connections",
            id=events.event_id("test-connections", str(i)),
        )
        for i in range(count)
    ]


async def test_overlapping_deliveries_reuse_connections_and_give_all_back(engine: AsyncEngine) -> None:
    checkouts: list[Any] = []
    event.listen(engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    publisher = Publisher(YieldingBus(), engine)
    arrivals = _arrivals(32)

    async def client(mine: list[events.Envelope[events.Payload]]) -> list[Status]:
        return [(await publisher.deliver([e])).status for e in mine]  # one after the other, as an HTTP client

    answers = await asyncio.gather(*(client(arrivals[i::4]) for i in range(4)))

    assert [status for mine in answers for status in mine] == [Status.PUBLISHED] * 32
    assert len(checkouts) < 32  # each pool checkout pings the store first; a handed-on connection does not
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # an idle publisher holds no connection
