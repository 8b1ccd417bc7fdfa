"""The in-process bus keeps Kafka's semantics: per-key partitions, groups, commits, redelivery."""

from __future__ import annotations

import asyncio

import pytest

from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import partition_for
from mlcd.events import Record

TOPIC = "mlcd.data"


def _records(key: str, count: int) -> list[Record]:
    return [Record(topic=TOPIC, key=key.encode(), value=f"{key}-{i}".encode()) for i in range(count)]


async def _drain(subscription: object, timeout_s: float = 0.05) -> list[Record]:
    got: list[Record] = []
    while batch := await subscription.poll(100, timeout_s):  # type: ignore[attr-defined]
        got.extend(batch)
    return got


@pytest.mark.parametrize(
    ("key", "java_hash"),
    [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("abc", 479470107),
    ],
)
def test_keys_land_on_the_partition_kafkas_java_client_picks(key: str, java_hash: int) -> None:
    # Vectors from Kafka's own UtilsTest for murmur2; the partition is (hash & 0x7fffffff) % n.
    assert partition_for(key.encode(), 12) == (java_hash & 0x7FFFFFFF) % 12


def test_records_without_a_key_go_to_partition_zero() -> None:
    assert partition_for(None, 4) == 0


async def test_one_keys_records_arrive_in_publish_order() -> None:
    bus = MemoryBus([TOPIC])
    subscription = await bus.subscribe("g", [TOPIC])
    await bus.publish(_records("wine", 30))
    got = await _drain(subscription)
    assert [r.value for r in got] == [f"wine-{i}".encode() for i in range(30)]
    assert len({r.partition for r in got}) == 1


async def test_poll_waits_for_a_record_published_meanwhile() -> None:
    bus = MemoryBus([TOPIC])
    subscription = await bus.subscribe("g", [TOPIC])
    waiting = asyncio.create_task(subscription.poll(10, 5))
    await asyncio.sleep(0)
    await bus.publish(_records("wine", 1))
    assert [r.value for r in await waiting] == [b"wine-0"]


async def test_poll_returns_empty_after_its_timeout() -> None:
    bus = MemoryBus([TOPIC])
    subscription = await bus.subscribe("g", [TOPIC])
    assert await subscription.poll(10, 0.01) == []


async def test_two_members_of_a_group_split_the_partitions() -> None:
    bus = MemoryBus([TOPIC], partitions=4)
    first = await bus.subscribe("g", [TOPIC])
    second = await bus.subscribe("g", [TOPIC])
    assert len(first.assigned) == len(second.assigned) == 2
    assert not set(first.assigned) & set(second.assigned)


async def test_each_group_receives_every_record() -> None:
    bus = MemoryBus([TOPIC])
    builder = await bus.subscribe("builder", [TOPIC])
    trainer = await bus.subscribe("trainer", [TOPIC])
    await bus.publish(_records("wine", 3))
    assert len(await _drain(builder)) == len(await _drain(trainer)) == 3


async def test_uncommitted_records_go_to_the_member_that_takes_over() -> None:
    bus = MemoryBus([TOPIC])
    leaving = await bus.subscribe("g", [TOPIC])
    await bus.publish(_records("wine", 5))
    got = await _drain(leaving)
    await leaving.commit(got[:2])
    await leaving.close()
    successor = await bus.subscribe("g", [TOPIC])
    assert [r.value for r in await _drain(successor)] == [b"wine-2", b"wine-3", b"wine-4"]


async def test_lag_counts_records_not_yet_polled() -> None:
    bus = MemoryBus([TOPIC])
    subscription = await bus.subscribe("g", [TOPIC])
    await bus.publish(_records("wine", 7))
    partition = partition_for(b"wine", bus.partitions)
    assert subscription.lag()[(TOPIC, partition)] == 7
    await subscription.poll(3, 0)
    assert subscription.lag()[(TOPIC, partition)] == 4


async def test_closed_subscription_stops_waiting() -> None:
    bus = MemoryBus([TOPIC])
    subscription = await bus.subscribe("g", [TOPIC])
    waiting = asyncio.create_task(subscription.poll(10, 30))
    await asyncio.sleep(0)
    await subscription.close()
    assert await asyncio.wait_for(waiting, 1) == []
