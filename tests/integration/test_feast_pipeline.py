"""The reference pipeline's Feast variant (pipelines/wine_quality_feast): it compiles, carries the CSV
pipeline's train and register components unchanged, and its own task builds the training set from the
feature service that the builder's `feast apply` registered, with real Feast 0.67.

The task's function runs in .venv-feast, which holds the versions it pins (feast 0.67.0, pandas 2.3.3),
as KFP's executor would call it (its source as KFP extracts it, an output artifact with a path). Then, slow,
the whole variant runs as mlcd's embedded runner runs it: labels from the real MinIO gateway over S3, the
feature service's features through `get_historical_features`, the model registered in a real MLflow
server. Its tasks' pins differ from mlcd's (pandas 2.3.3), so the runner gives each task a virtualenv of its
own, installing from a wheelhouse (tests/support/wheelhouse.py); 170-274 s wall here, about 67 s of it the
Feast task, beside a full test run on 2 cores.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import resource
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
from kfp.dsl import component_factory
from minio import Minio
from mlflow import MlflowClient
from sklearn.datasets import load_wine

from mlcd.adapters import feast
from mlcd.adapters.kfp import LocalOrchestrator
from mlcd.adapters.kfp_compiler import compile_pipeline
from mlcd.validator import batches, suite
from tests.conftest import unique
from tests.integration.test_pipeline_local import finished
from tests.support import wheelhouse, wine_pipeline
from tests.support.minio_gateway import Gateway, start_gateway

REPO = Path(__file__).resolve().parents[2]
VARIANT = REPO / "pipelines/wine_quality_feast"
FEAST_BIN = REPO / ".venv-feast/bin/feast"

LABELS_KEY = "wine_quality/labels 01.csv"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def wheels() -> Path:
    """Wheels for the variant's three tasks: Feast's pins, then the CSV pipeline's train and register pins."""
    training_set = wine_pipeline.module(VARIANT / "training_set.py")
    components = wine_pipeline.components()
    return wheelhouse.wheelhouse(
        [training_set.FEAST_PACKAGES, components.TRAIN_PACKAGES, components.REGISTER_PACKAGES]
    )


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path)
    yield gateway
    gateway.stop()


def test_the_variant_compiles_and_carries_the_csv_pipelines_components_unchanged(tmp_path: Path) -> None:
    refresh = wine_pipeline.module(VARIANT / "refresh_components.py", "wine_quality_feast_refresh")
    (tmp_path / "fresh").mkdir()

    fresh = refresh.render(tmp_path / "fresh")
    name = compile_pipeline(VARIANT, tmp_path / "variant.yaml")

    stale = [p.name for p in fresh if p.read_text() != (VARIANT / p.name).read_text()]
    assert stale == [], f"run: python pipelines/wine_quality_feast/refresh_components.py ({stale})"
    assert name == "wine_quality_feast"
    package = (tmp_path / "variant.yaml").read_text()
    assert "# Name: wine-quality-feast" in package
    assert all(task in package for task in ("load-training-set", "train-model", "register-model"))


@pytest.mark.skipif(not FEAST_BIN.exists(), reason="no .venv-feast: run `make feast-venv`")
async def test_the_training_set_comes_from_the_applied_feature_service_point_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await _applied_feature_repository(tmp_path, monkeypatch)
    wine = load_wine(as_frame=True).frame
    _labels(tmp_path / "labels.csv")

    written = _run_task(
        tmp_path,
        labels_uri=str(tmp_path / "labels.csv"),
        # As the trainer pins a batch it validated: a file's MD5 (the embedded object watcher's ETag).
        labels_etag=hashlib.md5((tmp_path / "labels.csv").read_bytes(), usedforsecurity=False).hexdigest(),
        labels_version_id="",
        feast_registry=registry,
        feast_project="wine_quality",
        feature_service="wine_quality_training",
        s3_endpoint="",
        min_rows=30,
    )

    built = pd.read_csv(written)
    assert list(built.columns) == [*load_wine().feature_names, "target"]  # the CSV pipeline's batch layout
    assert len(built) == len(wine)
    # Each wine's features as of its label's time: the March values of five wines are not seen in February.
    assert built["alcohol"].tolist() == wine["alcohol"].tolist()
    assert built["target"].tolist() == wine["target"].tolist()


def test_the_variants_suite_passes_label_batches_and_rejects_measurement_batches(tmp_path: Path) -> None:
    expectations = suite.load(VARIANT / "expectations.json")
    labels = _labels(tmp_path / "labels.csv")
    csv_batch = load_wine(as_frame=True).frame  # the CSV pipeline's layout: measurements, then target

    def verdict(frame: pd.DataFrame) -> dict[str, Any]:
        return suite.run(expectations, batches.parse(frame.to_csv(index=False).encode(), "csv").frame)

    assert verdict(labels)["success"] is True
    assert verdict(labels.assign(target=labels["target"].replace(2, 7)))["success"] is False
    rejected = verdict(csv_batch)
    assert rejected["success"] is False
    assert "missing: event_timestamp, wine_id" in suite.reason(suite.summarise(rejected))


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not FEAST_BIN.exists(), reason="no .venv-feast: run `make feast-venv`")
async def test_mlcds_local_runner_runs_the_whole_variant_into_a_registered_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str, minio: Gateway, wheels: Path
) -> None:
    registry = await _applied_feature_repository(tmp_path, monkeypatch)
    labels = _labels(tmp_path / "labels.csv")  # no measurement in it: those come from the feature service
    s3 = Minio(minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False)
    s3.make_bucket("landing")
    landed = s3.fput_object("landing", LABELS_KEY, str(tmp_path / "labels.csv"))
    for name, value in wheelhouse.task_environment(wheels).items():
        if name.startswith("PIP_"):
            monkeypatch.setenv(name, value)  # the runner's pip configuration, as a deployment would set it
    credentials = {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key}
    orchestrator = LocalOrchestrator(tmp_path / "home", REPO / "pipelines", credentials=credentials)
    pipeline = await orchestrator.latest("wine_quality_feast")
    assert pipeline is not None
    model, name = unique("wine_feast"), unique("mlcd-run")
    parameters = {
        "data_uri": f"s3://landing/{LABELS_KEY}",
        "data_etag": landed.etag,  # the batch as validated, as the trainer pins it
        "s3_endpoint": f"http://{minio.endpoint}",
        "feast_registry": registry,
        "mlflow_tracking_uri": mlflow_uri,
        "model_name": model,
        "git_commit": "0123abcd",
        "pipeline_version": pipeline.version,
        "n_estimators": 10,
        "run_alias": "mlcd-run-alias",
        "run_name": name,
    }
    pandas_before = importlib.metadata.version("pandas")

    started = time.monotonic()
    run = await finished(orchestrator, await orchestrator.submit(name, pipeline, parameters), 2100)
    took = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\nFeast variant on the local runner, a venv per task: {took:.0f} s wall, "
        f"{children.ru_utime + children.ru_stime:.0f} s CPU of reaped children ({run.state})",
        flush=True,
    )

    assert run.state == "SUCCEEDED", run.log_tail
    state = json.loads((tmp_path / "home/runs" / f"{name}.json").read_text())
    assert state["task_environments"] == "a virtualenv per task"
    assert importlib.metadata.version("pandas") == pandas_before  # mlcd's own environment left alone
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    version = client.get_model_version_by_alias(model, "mlcd-run-alias")
    assert version.version == run.outputs["model_version"]
    assert version.tags["mlcd.run_name"] == name
    assert version.tags["data_uri"] == f"s3://landing/{LABELS_KEY}"
    assert version.run_id is not None
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["train_rows"] + metrics["test_rows"] == len(labels)
    assert metrics["accuracy"] > 0.8
    mlflow.set_tracking_uri(mlflow_uri)  # put back after the test (tests/conftest.py)
    classifier = mlflow.sklearn.load_model(client.get_model_version_download_uri(model, version.version))
    assert list(classifier.feature_names_in_) == load_wine().feature_names


async def _applied_feature_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """features/wine_quality applied by Feast's CLI over the wine measurements dated 2026-01-01 (and, for
    five wines, other values dated 2026-03-01); the registry's path."""
    wine = load_wine(as_frame=True).frame
    measured = wine.drop(columns="target")
    measured.insert(0, "wine_id", range(len(wine)))
    measured["event_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC")
    later = measured.head(5).assign(alcohol=99.0, event_timestamp=pd.Timestamp("2026-03-01", tz="UTC"))
    pd.concat([measured, later]).to_parquet(tmp_path / "wine_features.parquet")
    monkeypatch.setenv("WINE_FEATURES_URI", str(tmp_path / "wine_features.parquet"))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for source in (REPO / "features/wine_quality").iterdir():
        (checkout / source.name).write_bytes(source.read_bytes())
    config = feast.prepare(checkout, None, tmp_path / "state")
    applied = await feast.apply(checkout, FEAST_BIN, 300)
    assert "Created feature service wine_quality_training" in applied.changes
    return str(config["registry"])


def _labels(path: Path) -> pd.DataFrame:
    """Every wine's label, dated 2026-02-01: wine_id, event_timestamp, target."""
    wine = load_wine(as_frame=True).frame
    labels = pd.DataFrame(
        {"wine_id": range(len(wine)), "event_timestamp": "2026-02-01T00:00:00Z", "target": wine["target"]}
    )
    labels.to_csv(path, index=False)
    return labels


def _run_task(tmp_path: Path, **arguments: object) -> Path:
    """Call the component's function in .venv-feast the way KFP's executor does: its extracted source,
    an output artifact whose `path` is where the Dataset goes."""
    training_set = wine_pipeline.module(VARIANT / "training_set.py", "wine_quality_feast_training_set")
    source = component_factory._get_function_source_definition(training_set.load_training_set.python_func)
    out = tmp_path / "training_set.csv"
    script = tmp_path / "task.py"
    script.write_text(
        "from __future__ import annotations\nimport json, sys\n\n"
        + source
        + textwrap.dedent(
            f"""

            class Artifact:
                path = {str(out)!r}

            print(load_training_set(**json.loads(sys.argv[1]), training_set=Artifact()))
            """
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLCD_")}
    subprocess.run(
        [str(FEAST_BIN.with_name("python")), str(script), json.dumps(arguments)],
        check=True,
        timeout=300,
        env={**environment, "FEAST_USAGE": "False"},
    )
    return out
