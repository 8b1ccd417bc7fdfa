"""Read topics straight off the broker with aiokafka, outside any consumer group, noting when each record
arrived: for checking what reached the bus, in which order per key, and how soon after a fault."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Seen:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    arrived_at: float

    @property
    def event_id(self) -> str:
        return self.headers.get("ce_id", b"").decode()

    @property
    def event_type(self) -> str:
        return self.headers.get("ce_type", b"").decode()

    def data(self) -> dict[str, Any]:
        """The payload (binary-mode CloudEvents: the record's value is the data JSON)."""
        payload: dict[str, Any] = json.loads(self.value)
        return payload


class TopicTail:
    """Every partition of `topics` (broker-side names) from the beginning, read in a background task."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.records: list[Seen] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicTail:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=60_000,
        )
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.stop()
            raise AssertionError(f"the broker has none of the topics {self.topics}")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=1000)
            now = time.monotonic()
            for tp, messages in batches.items():
                self.records.extend(
                    Seen(tp.topic, tp.partition, m.offset, m.key, m.value or b"", dict(m.headers), now)
                    for m in messages
                )

    def of_type(self, event_type: str) -> list[Seen]:
        return [r for r in self.records if r.event_type == event_type]

    def on_topic(self, suffix: str) -> list[Seen]:
        """Records of the topic whose broker-side name ends with `suffix` (the logical name)."""
        return [r for r in self.records if r.topic.endswith(suffix)]

    def ids(self) -> set[str]:
        return {r.event_id for r in self.records}

    def count_by_id(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for record in self.records:
            counts[record.event_id] += 1
        return dict(counts)

    def first_arrival(self, event_id: str) -> float | None:
        return min((r.arrived_at for r in self.records if r.event_id == event_id), default=None)

    def sequence_by_key(self) -> dict[tuple[str, bytes | None], list[str]]:
        """Event ids per (topic, key) in partition order."""
        ordered = sorted(self.records, key=lambda r: (r.topic, r.partition, r.offset))
        sequences: dict[tuple[str, bytes | None], list[str]] = defaultdict(list)
        for record in ordered:
            sequences[(record.topic, record.key)].append(record.event_id)
        return dict(sequences)
