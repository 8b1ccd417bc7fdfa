"""MinIO's Kafka notification target: raw S3 event JSON on a topic becomes the same events as /hooks/minio.

Each poll batch is written to the outbox in one transaction (redeliveries skipped by event id,
unparseable records parked on the DLQ) and only then are the offsets committed: at-least-once in,
effectively-once out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, logs
from mlcd.bus.port import Bus
from mlcd.bus.runtime import RelayWaker, dead_letter_record
from mlcd.errors import AdapterUnavailable
from mlcd.ingest import minio
from mlcd.ingest.delivery import ModelDirectory, Unparseable
from mlcd.ingest.publisher import GROUP, STORE_ERRORS
from mlcd.store import dead_letters, outbox

log = logs.get(__name__)
MINIO_GROUP = f"{GROUP}-minio"


class MinioTopicConsumer:
    def __init__(
        self,
        *,
        bus: Bus,
        engine: AsyncEngine,
        policies: ModelDirectory,
        topic: str,
        waker: RelayWaker | None = None,
        max_batch: int = 100,
        retry_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.policies = policies
        self.topic = topic
        self.waker = waker
        self.max_batch = max_batch
        self.retry_s = retry_s
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; a batch the store could not take stays uncommitted."""
        subscription = await self.bus.subscribe(MINIO_GROUP, [self.topic])
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    records = await subscription.poll(self.max_batch, 0.2)
                except AdapterUnavailable as e:
                    log.warning("MinIO topic poll failed; retrying", error=str(e))
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
                log.warning("store unavailable; MinIO records wait uncommitted", error=repr(e))
                await asyncio.sleep(self.retry_s)
        return False

    async def take(self, records: Sequence[events.Record]) -> None:
        """Write the events of these MinIO records to the outbox in one transaction."""
        async with self.engine.begin() as conn:
            for record in records:
                try:
                    envelopes = minio.parse(record.value, self.policies)
                except Unparseable as e:
                    log.warning("MinIO record parked: unparseable", topic=record.topic, offset=record.offset)
                    await dead_letters.park(conn, MINIO_GROUP, record, str(e), 0)
                    await outbox.add_raw(conn, dead_letter_record(record, MINIO_GROUP, str(e), 0))
                    continue
                fresh = [e for e in envelopes if not await outbox.contains(conn, e.id)]
                if fresh:
                    await outbox.add(conn, fresh)
        if self.waker is not None:
            self.waker.wake()
