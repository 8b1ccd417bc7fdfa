"""MinIO's Kafka notification target: raw S3 event JSON on a topic becomes the same DataArrived events."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.ingest.minio_topic import MinioTopicConsumer
from mlcd.policy.book import PolicyBook
from mlcd.store import dead_letters, outbox
from tests.support.ingest_app import FIXTURES, REPO

TOPIC = "minio.notifications"


def raw(value: bytes) -> events.Record:
    return events.Record(topic=TOPIC, key=b"landing/wine_quality/batch 01.csv", value=value)


async def test_records_on_the_minio_topic_become_data_arrived_once_and_garbage_is_parked(
    bus: MemoryBus | KafkaBus, engine: AsyncEngine
) -> None:
    if isinstance(bus, KafkaBus):
        await bus.create_topics([TOPIC])
    upload = (FIXTURES / "minio_put_encoded_key.json").read_bytes()
    deletion = (FIXTURES / "minio_delete.json").read_bytes()
    await bus.publish([raw(upload), raw(upload), raw(deletion), raw(b"{truncated")])

    consumer = MinioTopicConsumer(bus=bus, engine=engine, policies=PolicyBook(REPO / "policies"), topic=TOPIC)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                parked = await dead_letters.listing(conn)
            if parked:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task

    async with engine.connect() as conn:
        pending = [p.record for p in await outbox.unsent(conn, 10)]
    decoded = [events.decode(r) for r in pending if r.topic != events.DLQ_TOPIC]
    assert [type(e.data).__name__ for e in decoded if isinstance(e, events.Envelope)] == [
        "DataArrived",
        "DeliveryIgnored",
    ]
    arrived = decoded[0]
    assert isinstance(arrived, events.Envelope) and isinstance(arrived.data, events.DataArrived)
    assert arrived.data.key == "wine_quality/batch 01.csv"
    [dead] = parked
    assert dead.consumer_group == "mlcd-ingest-minio" and "not JSON" in dead.error
