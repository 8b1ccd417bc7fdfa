"""The ObjectStore adapters against a real MinIO-protocol server (juicefs gateway) and a local folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mlcd.adapters import objectstore
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound, PermanentError
from mlcd.ports import ObjectStore
from tests.support import processes
from tests.support.minio_gateway import Gateway, start_gateway

BUCKET = "landing"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from minio import Minio

    gateway = start_gateway(tmp_path_factory.mktemp("gateway"))
    Minio(gateway.endpoint, gateway.access_key, gateway.secret_key, secure=False).make_bucket(BUCKET)
    yield gateway
    gateway.stop()


@pytest.fixture(params=["minio", "folder"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "folder":
        yield objectstore.build(Settings(home=tmp_path))
        return
    gateway: Gateway = request.getfixturevalue("gateway")
    yield objectstore.build(
        Settings(
            s3_endpoint=gateway.endpoint, s3_access_key=gateway.access_key, s3_secret_key=gateway.secret_key
        )
    )


async def test_stored_batch_reads_back_with_its_size(store: ObjectStore) -> None:
    uri = await store.put(BUCKET, "wine_quality/batch 01.csv", b"a,b\n1,2\n", "text/csv")

    assert uri == store.uri(BUCKET, "wine_quality/batch 01.csv")
    assert await store.get(BUCKET, "wine_quality/batch 01.csv", max_bytes=1024) == b"a,b\n1,2\n"
    assert (await store.stat(BUCKET, "wine_quality/batch 01.csv")).size == 8


async def test_uris_name_the_store(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri(BUCKET, "wine_quality/a.csv")

    assert uri in {
        "s3://landing/wine_quality/a.csv",
        (tmp_path / "objects/landing/wine_quality/a.csv").as_uri(),
    }


async def test_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        await store.get(BUCKET, "wine_quality/never-uploaded.csv", max_bytes=1024)


async def test_object_over_the_limit_is_refused_unread(store: ObjectStore) -> None:
    await store.put(BUCKET, "wine_quality/big.csv", b"x" * 100)

    with pytest.raises(PermanentError, match="over the limit"):
        await store.get(BUCKET, "wine_quality/big.csv", max_bytes=99)


async def test_key_escaping_the_bucket_is_refused(store: ObjectStore) -> None:
    with pytest.raises(PermanentError, match="invalid object key"):
        await store.put(BUCKET, "../outside.csv", b"x")


async def test_minio_etag_is_reported(gateway: Gateway) -> None:
    store = objectstore.MinioObjectStore(gateway.endpoint, gateway.access_key, gateway.secret_key)
    await store.put(BUCKET, "wine_quality/etag.csv", b"a\n1\n")

    assert (await store.stat(BUCKET, "wine_quality/etag.csv")).etag


async def test_wrong_minio_secret_is_a_permanent_refusal(gateway: Gateway) -> None:
    store = objectstore.MinioObjectStore(gateway.endpoint, gateway.access_key, "not-the-secret")

    with pytest.raises(PermanentError, match="refused"):
        await store.stat(BUCKET, "wine_quality/a.csv")


async def test_unreachable_minio_is_a_temporary_outage() -> None:
    store = objectstore.MinioObjectStore(f"127.0.0.1:{processes.free_port()}", "k", "s", timeout_s=2)

    with pytest.raises(AdapterUnavailable):
        await store.ping()
