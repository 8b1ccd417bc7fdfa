"""The Bus port's contract, run once on the in-process bus and once on the real broker (Tansu).

What the runtime relies on: per-key order, redelivery of what a member did not commit, paused partitions
that return nothing until resumed, and records the broker refuses for good reported by position while
the others are acknowledged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.errors import RecordsRefused
from mlcd.events import Record
from tests.conftest import unique

TOPIC = "mlcd.data"


def _records(n: int, keys: tuple[bytes, ...] = (b"wine_quality", b"iris")) -> list[Record]:
    return [
        Record(
            topic=TOPIC, key=keys[i % len(keys)], value=str(i).encode(), headers=(("ce_id", str(i).encode()),)
        )
        for i in range(n)
    ]


async def _poll_until(subscription: Any, count: int, timeout_s: float = 60) -> list[Record]:
    got: list[Record] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(got)} of {count} records arrived"
        got.extend(await subscription.poll(100, 0.5))
    return got


async def test_one_keys_records_arrive_in_the_order_they_were_published(bus: MemoryBus | KafkaBus) -> None:
    await bus.publish(_records(20))
    subscription = await bus.subscribe(unique("order"), [TOPIC])
    try:
        got = await _poll_until(subscription, 20)
    finally:
        await subscription.close()
    for key in (b"wine_quality", b"iris"):
        values = [int(r.value) for r in got if r.key == key]
        assert values == sorted(values) and len(values) == 10


async def test_what_a_member_did_not_commit_is_delivered_to_the_next(bus: MemoryBus | KafkaBus) -> None:
    group = unique("redeliver")
    await bus.publish(_records(6, keys=(b"wine_quality",)))
    first = await bus.subscribe(group, [TOPIC])
    got = await _poll_until(first, 6)
    await first.commit(got[:3])
    await first.close()
    second = await bus.subscribe(group, [TOPIC])
    try:
        again = await _poll_until(second, 3)
    finally:
        await second.close()
    assert [int(r.value) for r in again] == [3, 4, 5]


async def test_a_paused_subscription_returns_nothing_until_resumed(bus: MemoryBus | KafkaBus) -> None:
    subscription = await bus.subscribe(unique("pause"), [TOPIC])
    try:
        await bus.publish(_records(1))
        await _poll_until(subscription, 1)
        subscription.pause()
        await bus.publish(_records(4))
        for _ in range(4):
            assert await subscription.poll(100, 0.5) == [], "a held partition returned records"
        subscription.resume()
        assert len(await _poll_until(subscription, 4)) == 4
    finally:
        await subscription.close()


@pytest.mark.parametrize("oversized_at", [0, 2])
async def test_a_record_over_the_size_limit_is_refused_by_position_and_the_rest_delivered(
    bus: MemoryBus | KafkaBus, oversized_at: int
) -> None:
    records = _records(3, keys=(b"wine_quality",))
    records[oversized_at] = Record(topic=TOPIC, key=b"wine_quality", value=b"x" * 1_100_000)
    subscription = await bus.subscribe(unique("refused"), [TOPIC])
    try:
        with pytest.raises(RecordsRefused) as refused:
            await bus.publish(records)
        assert list(refused.value.refused) == [oversized_at]
        assert "MessageSizeTooLargeError" in refused.value.refused[oversized_at]
        got = await _poll_until(subscription, 2)
    finally:
        await subscription.close()
    assert sorted(r.value for r in got) == sorted(r.value for i, r in enumerate(records) if i != oversized_at)


async def test_lag_counts_the_records_behind_the_partition_end(bus: MemoryBus | KafkaBus) -> None:
    await bus.publish(_records(5, keys=(b"wine_quality",)))
    subscription = await bus.subscribe(unique("lag"), [TOPIC])
    try:
        got: list[Record] = []
        while not got:
            got = await subscription.poll(3, 0.5)
        lag = subscription.lag()
    finally:
        await subscription.close()
    assert lag[(TOPIC, got[0].partition)] == 5 - len(got)
