"""The reference pipeline for real: compiled from the working tree, run on kfp.local, registered in MLflow."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from minio import Minio
from mlflow import MlflowClient

from mlcd.adapters.kfp import LocalOrchestrator
from mlcd.ports import Run
from tests.conftest import REPO, unique
from tests.support import flows
from tests.support.minio_gateway import Gateway, start_gateway

pytestmark = pytest.mark.slow
PIPELINES = REPO / "pipelines"


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """clean.csv, corrupt.csv and drifted.csv from the pipeline folder's own batch script."""
    out = tmp_path_factory.mktemp("batches")
    subprocess.run(
        [sys.executable, str(PIPELINES / "wine_quality" / "make_batches.py"), str(out)], check=True
    )
    return {name: out / f"{name}.csv" for name in ("clean", "corrupt", "drifted")}


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path)
    yield gateway
    gateway.stop()


async def finished(orchestrator: LocalOrchestrator, run: Run, timeout_s: float = 180) -> Run:
    async def ended() -> Run | None:
        current = await orchestrator.get_run(run.run_id)
        return current if current.finished else None

    return await flows.eventually(ended, f"run {run.name} to finish", timeout_s)


def parameters(data_uri: str, mlflow_uri: str, model: str, **extra: object) -> dict[str, object]:
    return {
        "data_uri": data_uri,
        "mlflow_tracking_uri": mlflow_uri,
        "model_name": model,
        "git_commit": "0123abcd",
        "pipeline_version": "tree",
        "n_estimators": 20,
        **extra,
    }


async def test_pipeline_compiles_to_kfp_ir_yaml(tmp_path: Path) -> None:
    ref = await LocalOrchestrator(tmp_path, PIPELINES).latest("wine_quality")

    assert ref is not None and ref.version.startswith("tree-")
    spec, platform = yaml.safe_load_all(await asyncio.to_thread(Path(ref.package_uri).read_text))
    assert spec["pipelineInfo"]["name"] == "wine-quality"
    assert set(spec["root"]["dag"]["tasks"]) == {"load-batch", "train-model", "register-model"}
    inputs = set(spec["root"]["inputDefinitions"]["parameters"])
    assert {"data_uri", "model_name", "mlflow_tracking_uri", "git_commit", "pipeline_version"} <= inputs
    assert {"n_estimators", "s3_endpoint", "fail_on_purpose", "run_alias", "run_name"} <= inputs
    assert not {name for name in inputs if "key" in name or "password" in name}  # no secret parameter
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    [from_secret] = executors["exec-load-batch"]["secretAsEnv"]
    assert from_secret["secretNameParameter"] == {"componentInputParameter": "s3_credentials_secret"}
    assert {e["envVar"] for e in from_secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


async def test_local_run_registers_a_model_version_with_metrics_and_tags(
    tmp_path: Path, mlflow_uri: str, batches: dict[str, Path]
) -> None:
    orchestrator = LocalOrchestrator(tmp_path, PIPELINES)
    ref = await orchestrator.latest("wine_quality")
    assert ref is not None
    model = unique("wine")
    data_uri = batches["clean"].as_uri()

    name = unique("run")

    run = await finished(
        orchestrator,
        await orchestrator.submit(name, ref, parameters(data_uri, mlflow_uri, model, run_name=name)),
    )

    assert run.state == "SUCCEEDED", run.log_tail
    version = str(run.outputs["model_version"])
    client = MlflowClient(tracking_uri=mlflow_uri)
    registered = client.get_model_version(model, version)
    assert registered.tags["data_uri"] == data_uri
    assert registered.tags["git_commit"] == "0123abcd"
    assert registered.tags["pipeline_version"] == "tree"
    # What ingest reads off MLflow's model-version-created webhook to ignore mlcd's own versions:
    assert registered.tags["mlcd.registered_by"] == "mlcd-trainer"
    assert registered.tags["mlcd.run_name"] == name
    assert registered.run_id is not None
    metrics = client.get_run(registered.run_id).data.metrics
    assert metrics["accuracy"] > 0.8
    assert {"f1_macro", "recall_class_0", "recall_class_1", "recall_class_2"} <= set(metrics)


async def test_pipeline_reads_a_batch_from_minio(
    tmp_path: Path, mlflow_uri: str, batches: dict[str, Path], minio: Gateway
) -> None:
    s3 = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False)
    s3.make_bucket("landing")
    s3.fput_object("landing", "wine_quality/batch 01.csv", str(batches["clean"]))
    credentials = {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key}
    orchestrator = LocalOrchestrator(tmp_path, PIPELINES, credentials=credentials)
    ref = await orchestrator.latest("wine_quality")
    assert ref is not None
    model = unique("wine")
    endpoint = {"s3_endpoint": f"http://{minio.endpoint}"}

    uri = "s3://landing/wine_quality/batch 01.csv"
    run = await finished(
        orchestrator,
        await orchestrator.submit(unique("run"), ref, parameters(uri, mlflow_uri, model, **endpoint)),
    )

    assert run.state == "SUCCEEDED", run.log_tail
    assert MlflowClient(tracking_uri=mlflow_uri).get_model_version(model, run.outputs["model_version"])
    records = [path.read_text() for path in (tmp_path / "runs").iterdir() if path.is_file()]
    assert records and not any(minio.secret_key in r or minio.access_key in r for r in records)


async def test_malformed_batch_fails_the_load_task_with_the_reason(
    tmp_path: Path, mlflow_uri: str, batches: dict[str, Path]
) -> None:
    orchestrator = LocalOrchestrator(tmp_path, PIPELINES)
    ref = await orchestrator.latest("wine_quality")
    assert ref is not None

    name = unique("run")
    run = await finished(
        orchestrator,
        await orchestrator.submit(
            name, ref, parameters(batches["corrupt"].as_uri(), mlflow_uri, unique("wine"))
        ),
    )

    assert run.state == "FAILED"
    assert run.failed_task == "load-batch"
    assert "lacks the columns proline" in run.log_tail
    assert await orchestrator.find_run(name) == run
