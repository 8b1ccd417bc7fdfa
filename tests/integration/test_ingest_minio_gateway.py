"""A real MinIO-protocol server notifies /hooks/minio of an upload; it becomes DataArrived, key decoded."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcd import events
from mlcd.adapters.objectstore import MinioObjectStore
from mlcd.bus.memory import MemoryBus
from mlcd.errors import ObjectChanged
from mlcd.store import migrate, outbox
from mlcd.store.database import create_engine
from tests.support import flows, ingest_app, minio_gateway

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[minio_gateway.Gateway]:
    with minio_gateway.running(tmp_path / "gateway", ingest_app.MINIO_TOKEN) as running:
        yield running


def upload(gateway: minio_gateway.Gateway, key: str, data: bytes) -> None:
    from minio.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig

    client: Any = gateway.client()
    client.make_bucket("landing")
    client.set_bucket_notification(
        "landing",
        NotificationConfig(
            queue_config_list=[
                QueueConfig(
                    ["s3:ObjectCreated:*"],
                    queue=minio_gateway.WEBHOOK_ARN,
                    config_id="mlcd",
                    prefix_filter_rule=PrefixFilterRule("wine_quality/"),
                )
            ]
        ),
    )
    client.put_object("landing", key, io.BytesIO(data), len(data), content_type="text/csv")


async def test_upload_through_the_gateway_arrives_as_data_for_the_model(
    gateway: minio_gateway.Gateway, sqlite_url: str
) -> None:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    app = ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), engine)
    data = b"fixed_acidity,alcohol,quality\n7.4,9.4,5\n"
    try:
        async with ingest_app.serving(app, gateway.receiver_port):
            await asyncio.to_thread(upload, gateway, "wine_quality/batch 01.csv", data)

            async def journaled() -> list[dict[str, Any]]:
                async with engine.connect() as conn:
                    return [e for _, e in await outbox.journal(conn, event_type=events.DataArrived.type)]

            arrived = await flows.eventually(journaled, "the upload's data-arrived event")
    finally:
        await engine.dispose()
    [event] = arrived
    assert event["subject"] == "wine_quality"
    assert event["data"]["key"] == "wine_quality/batch 01.csv"
    assert event["data"]["uri"] == "s3://landing/wine_quality/batch 01.csv"
    assert event["data"]["size"] == len(data)
    assert event["data"]["author"] == gateway.access_key  # MinIO's userIdentity.principalId: the uploader

    # The notification's eTag pins the batch: the validator's read with it gets these bytes, and once the
    # key is overwritten, the same pinned read is refused instead of handing back other bytes.
    objects = MinioObjectStore(gateway.endpoint, gateway.access_key, gateway.secret_key, timeout_s=10)
    key, etag = event["data"]["key"], event["data"]["etag"]
    assert etag and await objects.get("landing", key, 1_000_000, etag=etag) == data
    await asyncio.to_thread(
        gateway.client().put_object, "landing", key, io.BytesIO(b"other bytes\n"), 12, content_type="text/csv"
    )
    with pytest.raises(ObjectChanged, match=f"etag {etag}, now etag "):
        await objects.get("landing", key, 1_000_000, etag=etag)
