"""Deliveries that reach ingest through the bus rather than HTTP, turned into the same events.

Two kinds of raw record: MinIO's Kafka notification target (S3 event JSON on `MLCD_MINIO_KAFKA_TOPIC`),
and webhooks that were parked as unparseable and brought back by `mlcd dlq replay` (they return to
`mlcd.ingest` with their original headers and an `mlcd_source` header, so an upgraded parser reads them).
Each poll batch is written to the outbox in one transaction (redeliveries skipped by event id, what still
cannot be parsed parked again) and only then are the offsets committed: at-least-once in, effectively-once
out. CloudEvents on `mlcd.ingest` (the journal of ignored deliveries) are left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast, get_args

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, logs
from mlcd.bus.port import Bus
from mlcd.bus.runtime import RelayWaker, dead_letter_record
from mlcd.errors import AdapterUnavailable
from mlcd.ingest.delivery import Envelope, ModelDirectory, Source, Unparseable
from mlcd.ingest.intake import RAW_TOPIC, parse
from mlcd.ingest.publisher import GROUP, STORE_ERRORS
from mlcd.store import dead_letters, outbox

log = logs.get(__name__)
RAW_GROUP = f"{GROUP}-raw"


class RawDeliveryConsumer:
    def __init__(
        self,
        *,
        bus: Bus,
        engine: AsyncEngine,
        policies: ModelDirectory,
        minio_topic: str | None = None,
        waker: RelayWaker | None = None,
        max_batch: int = 100,
        retry_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.policies = policies
        self.minio_topic = minio_topic
        self.waker = waker
        self.max_batch = max_batch
        self.retry_s = retry_s
        self.ready = asyncio.Event()

    @property
    def topics(self) -> list[str]:
        return [RAW_TOPIC, *([self.minio_topic] if self.minio_topic else [])]

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; a batch the store could not take stays uncommitted."""
        await self.bus.start()
        subscription = await self.bus.subscribe(RAW_GROUP, self.topics)
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    records = await subscription.poll(self.max_batch, 0.2)
                except AdapterUnavailable as e:
                    log.warning("raw delivery poll failed; retrying", error=str(e))
                    await asyncio.sleep(self.retry_s)
                    continue
                if records and await self._take_until_done(records, stop):
                    await subscription.commit(records)
        finally:
            await subscription.close()

    async def _take_until_done(self, records: Sequence[events.Record], stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                await self.take(records)
                return True
            except STORE_ERRORS as e:
                log.warning("store unavailable; raw deliveries wait uncommitted", error=repr(e))
                await asyncio.sleep(self.retry_s)
        return False

    async def take(self, records: Sequence[events.Record]) -> None:
        """Write the events of these raw deliveries to the outbox in one transaction."""
        async with self.engine.begin() as conn:
            for record in records:
                source = self._source_of(record)
                if source is not None:
                    await self._take_one(conn, source, record)
        if self.waker is not None:
            self.waker.wake()

    def _source_of(self, record: events.Record) -> Source | None:
        if record.topic == self.minio_topic:
            return "minio"
        named = record.header("mlcd_source")
        return cast(Source, named) if named in get_args(Source) else None

    async def _take_one(self, conn: AsyncConnection, source: Source, record: events.Record) -> None:
        headers = {k.lower(): v.decode("utf-8", "replace") for k, v in record.headers}
        try:
            envelopes: list[Envelope] = parse(source, headers, record.value, self.policies)
        except Unparseable as e:
            log.warning("raw delivery parked: unparseable", source=source, topic=record.topic, reason=str(e))
            await dead_letters.park(conn, RAW_GROUP, record, str(e), 0)
            await outbox.add_raw(conn, dead_letter_record(record, RAW_GROUP, str(e), 0))
            return
        fresh = [e for e in envelopes if not await outbox.contains(conn, e.id)]
        if fresh:
            await outbox.add(conn, fresh)
