"""The Bus port: at-least-once delivery, per-key order, consumer groups with manual commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mlcd.events import Record


class Subscription(Protocol):
    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Records in partition order; an empty list when nothing arrived within the timeout."""
        ...

    async def commit(self, records: Sequence[Record]) -> None:
        """Mark every record up to these (per partition) as done for the group."""
        ...

    def pause(self) -> None:
        """Hold every assigned partition: polls keep the membership alive and return nothing."""
        ...

    def resume(self) -> None:
        """Fetch from the held partitions again, from where the last records returned left off."""
        ...

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each assigned partition, as of the last poll."""
        ...

    async def close(self) -> None:
        """Leave the group; what was not committed is redelivered to another member."""
        ...


class Bus(Protocol):
    async def start(self) -> None:
        """Connect and create the topics; raises AdapterUnavailable when the broker does not answer."""
        ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[Record]) -> None:
        """Return once every record is acknowledged (acks=all).

        Raises AdapterUnavailable when the broker may take them later (all are in doubt), and
        RecordsRefused, after every other record was acknowledged, for records it refuses for good.
        """
        ...

    async def subscribe(self, group: str, topics: Sequence[str]) -> Subscription: ...

    async def ping(self) -> None:
        """Raise AdapterUnavailable unless the broker answers (readiness)."""
        ...


def partition_for(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner choice: murmur2 of the key, so both buses place keys alike."""
    if key is None:
        return 0
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


def _murmur2(data: bytes) -> int:
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    if tail >= 3:
        h ^= data[length - tail + 2] << 16
    if tail >= 2:
        h ^= data[length - tail + 1] << 8
    if tail >= 1:
        h ^= data[length - tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h
