"""The validator service with the real expectation suite, on the reference batches, in a folder and MinIO."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import objectstore
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError
from mlcd.policy.book import PolicyBook
from mlcd.ports import ObjectStore
from mlcd.store import migrate
from mlcd.store.database import create_engine
from mlcd.validator.handlers import SERVICE
from tests.support import processes, service_harness
from tests.support.minio_gateway import Gateway, start_gateway

REPO = Path(__file__).resolve().parents[2]
BUCKET = "landing"
POLICY = """
model: wine_quality
data:
  bucket: landing
  prefix: wine_quality/
  suite: pipelines/wine_quality/expectations.json
  max_bytes: {max_bytes}
"""


@pytest.fixture(scope="module")
def reference_batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """clean, corrupt and drifted CSV batches, cut by the pipeline folder's own script."""
    out = tmp_path_factory.mktemp("batches")
    script = REPO / "pipelines/wine_quality/make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    return {path.stem: path.read_bytes() for path in out.glob("*.csv")}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from minio import Minio

    gateway = start_gateway(tmp_path_factory.mktemp("gateway"))
    Minio(gateway.endpoint, gateway.access_key, gateway.secret_key, secure=False).make_bucket(BUCKET)
    yield gateway
    gateway.stop()


def _repo(tmp_path: Path, max_bytes: int) -> Path:
    """A repository checkout: the policy and the real suite at the path the policy names."""
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    (repo / "policies/wine_quality.yaml").write_text(POLICY.format(max_bytes=max_bytes))
    (repo / "pipelines/wine_quality").mkdir(parents=True)
    shutil.copy(REPO / "pipelines/wine_quality/expectations.json", repo / "pipelines/wine_quality")
    return repo


def _checkout_settings(tmp_path: Path, max_bytes: int) -> Settings:
    repo = _repo(tmp_path, max_bytes)
    return Settings(home=tmp_path / "home", policies_dir=repo / "policies", pipelines_dir=repo / "pipelines")


@pytest.fixture(params=["folder", "minio"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    repo = _repo(tmp_path, max_bytes=1_000_000)
    if request.param == "folder":
        return Settings(
            home=tmp_path / "home", policies_dir=repo / "policies", pipelines_dir=repo / "pipelines"
        )
    gateway: Gateway = request.getfixturevalue("gateway")
    return Settings(
        home=tmp_path / "home",
        policies_dir=repo / "policies",
        pipelines_dir=repo / "pipelines",
        s3_endpoint=gateway.endpoint,
        s3_access_key=gateway.access_key,
        s3_secret_key=gateway.secret_key,
    )


@pytest.fixture
def folder_settings(tmp_path: Path) -> Settings:
    return _checkout_settings(tmp_path, 1_000_000)


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


class Landing:
    """Uploads a batch like a data engineer would, then hands its DataArrived to the validator."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.objects: ObjectStore = objectstore.build(settings)

    def ports(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "policies": PolicyBook(self.settings.policies_dir),
            "objects": self.objects,
        }

    async def arrive(self, name: str, data: bytes, *, size: int | None = None) -> events.Payload:
        key = f"wine_quality/{name}"
        uri = await self.objects.put(BUCKET, key, data)
        arrived = events.DataArrived(
            model="wine_quality", bucket=BUCKET, key=key, uri=uri, size=len(data) if size is None else size
        )
        emitted = await service_harness.deliver(self.engine, SERVICE, arrived, self.ports())
        assert len(emitted) == 1
        return emitted[0]

    async def stored_result(self, result_uri: str) -> dict[str, Any]:
        parsed = urlparse(result_uri)
        if parsed.scheme == "s3":
            key = parsed.path.lstrip("/")
        else:
            key = unquote(parsed.path).split(f"/objects/{BUCKET}/", 1)[1]
        raw = await self.objects.get(BUCKET, key, max_bytes=10_000_000)
        result: dict[str, Any] = json.loads(raw)
        return result


@pytest.fixture
def landing(engine: AsyncEngine, settings: Settings) -> Landing:
    return Landing(engine, settings)


@pytest.fixture
def folder_landing(engine: AsyncEngine, folder_settings: Settings) -> Landing:
    return Landing(engine, folder_settings)


async def test_clean_batch_is_validated_with_its_result_stored_beside_it(
    landing: Landing, reference_batches: dict[str, bytes]
) -> None:
    outcome = await landing.arrive("clean.csv", reference_batches["clean"])

    assert isinstance(outcome, events.DataValidated)
    assert outcome.rows == 178
    assert outcome.suite == "wine_quality"
    assert outcome.uri == landing.objects.uri(BUCKET, "wine_quality/clean.csv")
    assert outcome.result_uri == landing.objects.uri(BUCKET, "wine_quality/_validation/clean.csv.json")
    assert outcome.expectations and all(e.success for e in outcome.expectations)
    stored = await landing.stored_result(outcome.result_uri)
    assert stored["success"] is True
    assert stored["meta"]["mlcd"]["rows"] == 178


async def test_corrupt_batch_is_rejected_naming_what_failed_and_what_was_seen(
    landing: Landing, reference_batches: dict[str, bytes]
) -> None:
    outcome = await landing.arrive("corrupt.csv", reference_batches["corrupt"])

    assert isinstance(outcome, events.DataRejected)
    assert "column 'proline' is missing" in outcome.reason
    assert "alcohol: column values to not be null failed for 12 rows" in outcome.reason
    failed = {(e.expectation, e.column): e for e in outcome.failed}
    assert failed["expect_column_values_to_be_between", "hue"].observed["unexpected_examples"][:1] == [-1.0]
    assert failed["expect_column_values_to_be_in_set", "target"].observed["unexpected_count"] == 3
    assert ("expect_column_values_to_be_between", "proline") not in failed  # the missing column says it all
    stored = await landing.stored_result(outcome.result_uri)
    assert stored["success"] is False
    assert stored["meta"]["mlcd"]["reason"] == outcome.reason


async def test_drifted_batch_passes_the_suite(
    folder_landing: Landing, reference_batches: dict[str, bytes]
) -> None:
    outcome = await folder_landing.arrive("drifted.csv", reference_batches["drifted"])

    assert isinstance(outcome, events.DataValidated)


async def test_parquet_batch_is_validated(
    folder_landing: Landing, reference_batches: dict[str, bytes]
) -> None:
    buffer = io.BytesIO()
    pd.read_csv(io.BytesIO(reference_batches["clean"])).to_parquet(buffer)

    outcome = await folder_landing.arrive("clean.parquet", buffer.getvalue())

    assert isinstance(outcome, events.DataValidated)
    assert outcome.rows == 178


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.csv", b"", "the file is empty"),
        ("blank.csv", b"\n\n  \n", "the file is empty"),
        ("header-only.csv", b"alcohol,target\n", "has a header (2 columns) but no rows"),
        ("notes.json", b'{"rows": []}', "not a CSV or Parquet file: wine_quality/notes.json"),
        ("photo.csv", bytes(range(256)) * 4, "not a CSV file"),
        ("fake.parquet", b"alcohol,target\n1,2\n", "not a Parquet file"),
        ("torn.parquet", b"PAR1" + b"\x00garbage" * 8 + b"PAR1", "unparsable Parquet"),
        ("ragged.csv", b'a,b\n1,2\n3,"4\n', "unparsable CSV"),
    ],
)
async def test_unreadable_files_are_rejected_with_a_clear_reason(
    folder_landing: Landing, name: str, data: bytes, reason: str
) -> None:
    outcome = await folder_landing.arrive(name, data)

    assert isinstance(outcome, events.DataRejected)
    assert reason in outcome.reason
    assert outcome.result_uri.endswith(f"/_validation/{name}.json")


async def test_batch_over_the_size_limit_is_rejected_unread(
    engine: AsyncEngine, tmp_path: Path, reference_batches: dict[str, bytes]
) -> None:
    settings = _checkout_settings(tmp_path, 1000)
    landing = Landing(engine, settings)

    outcome = await landing.arrive("clean.csv", reference_batches["clean"])

    assert isinstance(outcome, events.DataRejected)
    assert (
        f"the file is {len(reference_batches['clean'])} bytes, over the limit of 1000 bytes" in outcome.reason
    )


async def test_batch_that_grew_past_the_limit_after_the_notice_is_rejected(
    engine: AsyncEngine, tmp_path: Path, reference_batches: dict[str, bytes]
) -> None:
    settings = _checkout_settings(tmp_path, 1000)
    landing = Landing(engine, settings)

    outcome = await landing.arrive("clean.csv", reference_batches["clean"], size=10)

    assert isinstance(outcome, events.DataRejected)
    assert "over the limit of 1000" in outcome.reason


async def test_batch_deleted_before_validation_is_rejected(
    folder_landing: Landing, engine: AsyncEngine
) -> None:
    arrived = events.DataArrived(
        model="wine_quality", bucket=BUCKET, key="wine_quality/gone.csv", uri="file:///gone.csv", size=10
    )

    emitted = await service_harness.deliver(engine, SERVICE, arrived, folder_landing.ports())

    assert len(emitted) == 1 and isinstance(emitted[0], events.DataRejected)
    assert "the object is gone" in emitted[0].reason


async def test_object_store_outage_is_retried_not_rejected(
    engine: AsyncEngine, folder_settings: Settings
) -> None:
    unreachable = folder_settings.model_copy(
        update={
            "s3_endpoint": f"127.0.0.1:{processes.free_port()}",
            "s3_access_key": None,
            "s3_secret_key": None,
            "s3_timeout_s": 2.0,
        }
    )
    arrived = events.DataArrived(
        model="wine_quality",
        bucket=BUCKET,
        key="wine_quality/a.csv",
        uri="s3://landing/wine_quality/a.csv",
        size=10,
    )

    with pytest.raises(AdapterUnavailable):
        await service_harness.deliver(engine, SERVICE, arrived, Landing(engine, unreachable).ports())


async def test_missing_suite_file_is_dead_lettered_for_the_operator(
    folder_landing: Landing, folder_settings: Settings, reference_batches: dict[str, bytes]
) -> None:
    suite_file = folder_settings.source_root / "pipelines/wine_quality/expectations.json"
    await asyncio.to_thread(suite_file.unlink)

    with pytest.raises(PermanentError, match=r"expectations\.json cannot be read"):
        await folder_landing.arrive("clean.csv", reference_batches["clean"])
