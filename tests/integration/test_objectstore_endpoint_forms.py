"""MLCD_S3_ENDPOINT as an operator copies it from MLflow's MLFLOW_S3_ENDPOINT_URL (http://host:port) reaches
the real MinIO-protocol gateway exactly as the host:port form does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcd.adapters import objectstore
from mlcd.config import Settings
from tests.support.minio_gateway import Gateway, start_gateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path)
    gateway.client().make_bucket("landing")
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("form", ["{}", "http://{}", "http://{}/"])
async def test_every_endpoint_form_reads_and_writes_objects(gateway: Gateway, form: str) -> None:
    settings = Settings(
        s3_endpoint=form.format(gateway.endpoint),
        s3_access_key=gateway.access_key,
        s3_secret_key=gateway.secret_key,
    )
    store = objectstore.build(settings)

    await store.ping()
    await store.put("landing", "wine_quality/a.csv", b"a,b\n1,2\n", "text/csv")
    assert await store.get("landing", "wine_quality/a.csv", max_bytes=64) == b"a,b\n1,2\n"
