"""The in-process bus: the embedded default and the fast twin of the Kafka adapter in tests.

Same semantics as Kafka: partitions by key, consumer groups that split partitions, committed offsets,
and redelivery of whatever a member that leaves had not committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from mlcd.bus.port import partition_for
from mlcd.errors import RecordsRefused
from mlcd.events import Record

TopicPartition = tuple[str, int]


class MemoryBus:
    def __init__(
        self, topics: Sequence[str], partitions: int = 4, *, max_request_size: int = 1_048_576
    ) -> None:
        self.partitions = partitions
        self.max_request_size = max_request_size
        self._logs: dict[TopicPartition, list[Record]] = {
            (t, p): [] for t in topics for p in range(partitions)
        }
        self._committed: dict[tuple[str, TopicPartition], int] = defaultdict(int)
        self._members: dict[str, list[_MemorySubscription]] = defaultdict(list)
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for members in list(self._members.values()):
            for member in list(members):
                await member.close()

    async def ping(self) -> None:
        return None

    async def publish(self, records: Sequence[Record]) -> None:
        refused = {i: self._too_large(r) for i, r in enumerate(records) if self._too_large(r)}
        async with self._arrived:
            for i, record in enumerate(records):
                if i in refused:
                    continue
                partition = partition_for(record.key, self.partitions)
                log = self._logs.setdefault((record.topic, partition), [])
                log.append(
                    replace(
                        record, partition=partition, offset=len(log), timestamp_ms=int(time.time() * 1000)
                    )
                )
            self._arrived.notify_all()
        if refused:
            raise RecordsRefused(refused)

    def _too_large(self, record: Record) -> str:
        # The same test as aiokafka's producer: the record's serialised size against max_request_size.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, list(record.headers)
        )
        if size > self.max_request_size:
            return f"MessageSizeTooLargeError: the record is {size} bytes, over max_request_size"
        return ""

    async def subscribe(self, group: str, topics: Sequence[str]) -> _MemorySubscription:
        for topic in topics:
            for p in range(self.partitions):
                self._logs.setdefault((topic, p), [])
        member = _MemorySubscription(self, group, tuple(topics))
        self._members[group].append(member)
        self._rebalance(group)
        return member

    def _leave(self, member: _MemorySubscription) -> None:
        self._members[member.group].remove(member)
        self._rebalance(member.group)

    def _rebalance(self, group: str) -> None:
        members = self._members[group]
        wanted = sorted({tp for m in members for tp in self._logs if tp[0] in m.topics})
        for member in members:
            member.assign([])
        for i, tp in enumerate(wanted):
            candidates = [m for m in members if tp[0] in m.topics]
            candidates[i % len(candidates)].assigned.append(tp)
        for member in members:
            member.assign(member.assigned)

    def _commit(self, group: str, tp: TopicPartition, offset: int) -> None:
        key = (group, tp)
        self._committed[key] = max(self._committed[key], offset)


class _MemorySubscription:
    def __init__(self, bus: MemoryBus, group: str, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self.group = group
        self.topics = topics
        self.assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._closed = False
        self._paused = False

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)
        self._positions = {tp: self._bus._committed[(self.group, tp)] for tp in self.assigned}

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._bus._arrived:
            while True:
                batch = self._take(max_records)
                remaining = deadline - asyncio.get_running_loop().time()
                if batch or remaining <= 0 or self._closed:
                    return batch
                try:
                    await asyncio.wait_for(self._bus._arrived.wait(), remaining)
                except TimeoutError:
                    return self._take(max_records)

    def _take(self, max_records: int) -> list[Record]:
        batch: list[Record] = []
        if self._paused:
            return batch
        for tp in self.assigned:
            log = self._bus._logs[tp]
            position = self._positions[tp]
            taken = log[position : position + max_records - len(batch)]
            batch.extend(taken)
            self._positions[tp] = position + len(taken)
            if len(batch) >= max_records:
                break
        return batch

    async def commit(self, records: Sequence[Record]) -> None:
        for record in records:
            tp = (record.topic, record.partition)
            if tp in self._positions:
                self._bus._commit(self.group, tp, record.offset + 1)

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self._bus._logs[tp]) - self._positions[tp] for tp in self.assigned}

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._leave(self)
            async with self._bus._arrived:
                self._bus._arrived.notify_all()
