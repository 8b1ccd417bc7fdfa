"""Raw deliveries on the bus: MinIO's Kafka notification target, and parked webhooks replayed."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.bus.runtime import OutboxRelay
from mlcd.ingest.intake import raw_record
from mlcd.ingest.raw_topics import RawDeliveryConsumer
from mlcd.policy.book import PolicyBook
from mlcd.store import dead_letters, outbox
from tests.support import flows
from tests.support.ingest_app import FIXTURES, REPO

MINIO_TOPIC = "minio.notifications"


def minio_record(value: bytes) -> events.Record:
    return events.Record(topic=MINIO_TOPIC, key=b"landing/wine_quality/batch 01.csv", value=value)


async def consume_until(
    consumer: RawDeliveryConsumer, engine: AsyncEngine, dead_letters_expected: int
) -> None:
    """Run the consumer until the parked count is reached and everything before it was taken."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def parked() -> bool:
            async with engine.connect() as conn:
                return len(await dead_letters.listing(conn, include_replayed=True)) >= dead_letters_expected

        await flows.eventually(parked, f"{dead_letters_expected} dead letters")
    finally:
        stop.set()
        await task


async def unsent_events(engine: AsyncEngine) -> list[events.Envelope[events.Payload]]:
    async with engine.connect() as conn:
        pending = [p.record for p in await outbox.unsent(conn, 100)]
    decoded = [events.decode(r) for r in pending if r.topic != events.DLQ_TOPIC]
    return [e for e in decoded if isinstance(e, events.Envelope)]


async def test_records_on_the_minio_topic_become_data_arrived_once_and_garbage_is_parked(
    bus: MemoryBus | KafkaBus, engine: AsyncEngine
) -> None:
    if isinstance(bus, KafkaBus):
        await bus.create_topics([MINIO_TOPIC])
    upload = (FIXTURES / "minio_put_encoded_key.json").read_bytes()
    deletion = (FIXTURES / "minio_delete.json").read_bytes()
    await bus.publish(
        [minio_record(upload), minio_record(upload), minio_record(deletion), minio_record(b"{trunc")]
    )

    policies = PolicyBook(REPO / "policies")
    consumer = RawDeliveryConsumer(bus=bus, engine=engine, policies=policies, minio_topic=MINIO_TOPIC)
    await consume_until(consumer, engine, dead_letters_expected=1)

    taken = await unsent_events(engine)
    assert [type(e.data).__name__ for e in taken] == ["DataArrived", "DeliveryIgnored"]
    arrived = taken[0].data
    assert isinstance(arrived, events.DataArrived) and arrived.key == "wine_quality/batch 01.csv"
    async with engine.connect() as conn:
        [dead] = await dead_letters.listing(conn)
    assert dead.consumer_group == "mlcd-ingest-raw" and "not JSON" in dead.error


async def test_replayed_parked_webhooks_are_parsed_again_and_parked_again_if_still_unreadable(
    engine: AsyncEngine,
) -> None:
    bus = MemoryBus(events.TOPICS)
    headers = {"x-gitlab-event": "Push Hook", "idempotency-key": "k-replay"}
    async with engine.begin() as conn:  # what ingest parked when a delivery could not be read
        await dead_letters.park(conn, "mlcd-ingest", raw_record("gitlab", headers, b"{trunc"), "not JSON", 0)
        assert await dead_letters.replay(conn) == 1
    await OutboxRelay(engine, bus).publish_pending()
    # A delivery the parser of its day could not read, replayed after an upgrade that reads it.
    await bus.publish([raw_record("gitlab", headers, (FIXTURES / "gitlab_push.json").read_bytes())])

    policies = PolicyBook(REPO / "policies")
    await consume_until(RawDeliveryConsumer(bus=bus, engine=engine, policies=policies), engine, 2)

    [pushed] = await unsent_events(engine)
    assert isinstance(pushed.data, events.CodePushed) and pushed.data.model == "wine_quality"
    async with engine.connect() as conn:
        parked_again = (await dead_letters.listing(conn))[0]
    assert parked_again.consumer_group == "mlcd-ingest-raw" and parked_again.topic == "mlcd.ingest"
