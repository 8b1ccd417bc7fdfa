"""The batch validated is the batch trained: the ETag (or object version) a batch arrived with is pinned
through its validation into its training run, on the real MinIO gateway (no versioning: If-Match), moto's
S3 server with versioning on, and the embedded folder store; the runs are real kfp.local runs.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import kfp, objectstore
from mlcd.adapters.kfp import LocalOrchestrator
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.ports import ObjectStore
from mlcd.store import migrate
from mlcd.store.database import create_engine
from mlcd.trainer import decisions
from mlcd.validator.handlers import SERVICE as VALIDATOR
from tests.conftest import REPO, unique
from tests.integration.test_trainer import deliver, emitted, follow_until, local_ports, validated
from tests.support import mlflow_s3, service_harness
from tests.support.minio_gateway import Gateway, start_gateway

MODEL = "wine_quality"
BUCKET = "landing"
KEY = "wine_quality/batch 01.csv"
URI = f"s3://{BUCKET}/{KEY}"
TRAIN_ROWS_OF_178 = 133  # the pipeline holds out a quarter (test_fraction 0.25) of the clean batch


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The reference clean batch (178 wines), cut by the pipeline folder's own script."""
    out = tmp_path_factory.mktemp("batches")
    script = REPO / "pipelines/wine_quality/make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    return (out / "clean.csv").read_bytes()


def _fewer_rows(batch: bytes, rows: int) -> bytes:
    """Another valid batch: the first `rows` wines of `batch`."""
    return pd.read_csv(io.BytesIO(batch)).head(rows).to_csv(index=False).encode()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("gateway"))
    gateway.client().make_bucket(BUCKET)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mlflow_s3.S3Store]:
    """moto's S3 server, whose bucket keeps every version of an object."""
    from minio import Minio
    from minio.versioningconfig import ENABLED, VersioningConfig

    with mlflow_s3.moto_s3(tmp_path_factory.mktemp("moto"), BUCKET) as store:
        endpoint = store.endpoint_url.removeprefix("http://")
        Minio(endpoint, store.access_key, store.secret_key, secure=False).set_bucket_versioning(
            BUCKET, VersioningConfig(ENABLED)
        )
        yield store


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


def _settings(tmp_path: Path, store: str, request: pytest.FixtureRequest, **extra: Any) -> Settings:
    """A checkout's settings on the store named: `folder`, `minio` (the gateway) or `versioned` (moto)."""
    s3: dict[str, Any] = {}
    if store == "minio":
        gateway: Gateway = request.getfixturevalue("gateway")
        s3 = {"s3_endpoint": gateway.endpoint, "s3_access_key": gateway.access_key}
        s3["s3_secret_key"] = gateway.secret_key
    elif store == "versioned":
        moto: mlflow_s3.S3Store = request.getfixturevalue("versioned")
        s3 = {"s3_endpoint": moto.endpoint_url.removeprefix("http://"), "s3_access_key": moto.access_key}
        s3["s3_secret_key"] = moto.secret_key
    secrets = {k: SecretStr(v) if k != "s3_endpoint" else v for k, v in s3.items()}
    return Settings(home=tmp_path / "home", pipelines_dir=REPO / "pipelines", **secrets, **extra)


async def _upload(objects: ObjectStore, settings: Settings, data: bytes) -> events.DataArrived:
    """Store `data` at KEY as an upload would; its arrival as ingest reports it (ETag, version)."""
    await objects.put(BUCKET, KEY, data, "text/csv")
    if settings.s3_endpoint:
        stored = await objects.stat(BUCKET, KEY)
        etag, version = stored.etag, stored.version_id
    else:
        etag, version = _md5(data), ""  # what the embedded object watcher reports
    return events.DataArrived(
        model=MODEL, bucket=BUCKET, key=KEY, uri=URI, size=len(data), etag=etag, version_id=version
    )


async def _validate(engine: AsyncEngine, settings: Settings, arrived: events.DataArrived) -> events.Payload:
    repo = settings.source_root
    ports = {
        "settings": settings,
        "policies": PolicyBook(repo / "policies"),
        "objects": objectstore.build(settings),
    }
    [verdict] = await service_harness.deliver(engine, VALIDATOR, arrived, ports)
    return verdict


@pytest.fixture(params=["minio", "folder"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return _settings(tmp_path, request.param, request)


async def test_a_batch_overwritten_before_its_validation_is_rejected_naming_both_etags(
    engine: AsyncEngine, store_settings: Settings, clean: bytes
) -> None:
    objects = objectstore.build(store_settings)
    arrived = await _upload(objects, store_settings, clean)
    await objects.put(BUCKET, KEY, _fewer_rows(clean, 60), "text/csv")  # before the validator reads it

    verdict = await _validate(engine, store_settings, arrived)

    assert isinstance(verdict, events.DataRejected)
    now = _md5(_fewer_rows(clean, 60))
    assert verdict.reason == (
        f"the object changed since it arrived: etag {arrived.etag}, now etag {now}"
        " — upload it again as a new key"
    )
    assert verdict.etag == arrived.etag


async def test_a_batch_validated_as_it_arrived_hands_its_pin_on(
    engine: AsyncEngine, store_settings: Settings, clean: bytes
) -> None:
    arrived = await _upload(objectstore.build(store_settings), store_settings, clean)

    verdict = await _validate(engine, store_settings, arrived)

    assert isinstance(verdict, events.DataValidated), verdict
    assert (verdict.uri, verdict.etag, verdict.rows) == (URI, arrived.etag, 178)


async def test_a_versioned_batch_overwritten_before_its_validation_is_validated_as_it_arrived(
    engine: AsyncEngine, tmp_path: Path, request: pytest.FixtureRequest, clean: bytes
) -> None:
    settings = _settings(tmp_path, "versioned", request)
    objects = objectstore.build(settings)
    arrived = await _upload(objects, settings, clean)
    await objects.put(BUCKET, KEY, b"not,the\nbatch,validated\n", "text/csv")

    verdict = await _validate(engine, settings, arrived)

    assert arrived.version_id
    assert isinstance(verdict, events.DataValidated), verdict
    assert (verdict.version_id, verdict.rows) == (arrived.version_id, 178)


# --- into the training run (real kfp.local runs) ---------------------------------------------------


def _trainer(tmp_path: Path, settings: Settings, orchestrator: LocalOrchestrator) -> dict[str, Any]:
    return local_ports(tmp_path, settings, orchestrator, n_estimators=10)


@pytest.fixture
async def run_settings(
    request: pytest.FixtureRequest, tmp_path: Path, mlflow_uri: str
) -> AsyncIterator[tuple[Settings, LocalOrchestrator]]:
    settings = _settings(tmp_path, request.param, request, mlflow_tracking_uri=mlflow_uri)
    orchestrator = kfp.build(settings)
    assert isinstance(orchestrator, LocalOrchestrator)
    yield settings, orchestrator
    await orchestrator.close()


async def _train(
    engine: AsyncEngine, ports: dict[str, Any], verdict: events.DataValidated
) -> events.TrainingSucceeded | events.TrainingFailed:
    trigger = unique("evt")
    await deliver(engine, ports, verdict, trigger)

    async def ended() -> bool:
        return bool(
            await emitted(engine, events.TrainingSucceeded) or await emitted(engine, events.TrainingFailed)
        )

    await follow_until(engine, ports, ended, timeout_s=300)
    [started] = await emitted(engine, events.TrainingStarted)
    assert started["run_name"] == decisions.run_name(MODEL, trigger)
    assert (started["data_etag"], started["data_version_id"]) == (verdict.etag, verdict.version_id)
    [outcome] = [
        *[
            events.TrainingSucceeded.model_validate(e)
            for e in await emitted(engine, events.TrainingSucceeded)
        ],
        *[events.TrainingFailed.model_validate(e) for e in await emitted(engine, events.TrainingFailed)],
    ]
    return outcome


def _pinned_verdict(arrived: events.DataArrived) -> events.DataValidated:
    return validated(URI).model_copy(update={"etag": arrived.etag, "version_id": arrived.version_id})


@pytest.mark.slow
@pytest.mark.parametrize("run_settings", ["minio", "folder"], indirect=True)
async def test_a_batch_overwritten_after_its_validation_fails_its_run_naming_both_etags(
    engine: AsyncEngine, tmp_path: Path, run_settings: tuple[Settings, LocalOrchestrator], clean: bytes
) -> None:
    settings, orchestrator = run_settings
    ports = _trainer(tmp_path, settings, orchestrator)
    arrived = await _upload(ports["objects"], settings, clean)
    overwrite = _fewer_rows(clean, 60)
    await ports["objects"].put(BUCKET, KEY, overwrite, "text/csv")  # after validation, before training

    outcome = await _train(engine, ports, _pinned_verdict(arrived))

    assert isinstance(outcome, events.TrainingFailed), outcome
    assert outcome.failed_task == "load-batch"
    assert (
        f"changed since it was validated: etag {arrived.etag} was validated, the object is now etag "
        f"{_md5(overwrite)}; upload it again as a new key" in outcome.log_tail
    )


@pytest.mark.slow
@pytest.mark.parametrize("run_settings", ["minio"], indirect=True)
async def test_a_batch_trained_as_validated_registers_its_version(
    engine: AsyncEngine, tmp_path: Path, run_settings: tuple[Settings, LocalOrchestrator], clean: bytes
) -> None:
    settings, orchestrator = run_settings
    ports = _trainer(tmp_path, settings, orchestrator)
    arrived = await _upload(ports["objects"], settings, clean)

    outcome = await _train(engine, ports, _pinned_verdict(arrived))

    assert isinstance(outcome, events.TrainingSucceeded), outcome
    assert outcome.metrics["train_rows"] == TRAIN_ROWS_OF_178


@pytest.mark.slow
@pytest.mark.parametrize("run_settings", ["versioned"], indirect=True)
async def test_a_versioned_batch_overwritten_after_its_validation_trains_the_version_validated(
    engine: AsyncEngine,
    tmp_path: Path,
    run_settings: tuple[Settings, LocalOrchestrator],
    clean: bytes,
    mlflow_uri: str,
) -> None:
    settings, orchestrator = run_settings
    ports = _trainer(tmp_path, settings, orchestrator)
    arrived = await _upload(ports["objects"], settings, clean)
    await ports["objects"].put(BUCKET, KEY, _fewer_rows(clean, 60), "text/csv")

    outcome = await _train(engine, ports, _pinned_verdict(arrived))

    assert isinstance(outcome, events.TrainingSucceeded), outcome
    assert outcome.metrics["train_rows"] == TRAIN_ROWS_OF_178  # the 178 wines validated, not the 60 after
    version = MlflowClient(tracking_uri=mlflow_uri).get_model_version(MODEL, outcome.model_version)
    assert version.tags["data_uri"] == URI
