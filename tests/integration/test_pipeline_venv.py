"""The reference pipeline runs as a cluster would run it: each task in a fresh virtualenv holding only what
its component declares (`kfp.local.SubprocessRunner(use_venv=True)`), reading its batch from the real MinIO
gateway over S3 and registering the model in a real MLflow server.

Slow (pip installs pandas, scikit-learn and the MLflow client into each task's venv), so one run only; the
time it took is printed (wall and CPU: on a shared machine the wall time mostly says how busy it is;
1294 s wall at a load average of 22 on 2 cores, 705 s on a quieter run, 130 s at load 6). The tasks
install from a wheelhouse downloaded once (tests/support/wheelhouse.py), as pods would from an in-cluster
mirror.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, unique
from tests.support import wheelhouse, wine_pipeline
from tests.support.minio_gateway import Gateway, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

RUN = """
import json, sys
from kfp import components, local

package, root, parameters = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
local.init(runner=local.SubprocessRunner(use_venv=True), pipeline_root=root, raise_on_error=True)
task = components.load_component_from_file(package)(**parameters)
print("OUTPUTS " + json.dumps({k: str(v) for k, v in task.outputs.items()}))
"""


@pytest.fixture(scope="module")
def wheels() -> Path:
    components = wine_pipeline.components()
    return wheelhouse.wheelhouse(
        [components.LOAD_PACKAGES, components.TRAIN_PACKAGES, components.REGISTER_PACKAGES]
    )


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path)
    yield gateway
    gateway.stop()


def test_each_task_runs_in_a_venv_of_only_its_declared_packages(
    tmp_path: Path, minio: Gateway, mlflow_uri: str, wheels: Path
) -> None:
    batches = tmp_path / "batches"
    subprocess.run(
        [sys.executable, str(REPO / "pipelines/wine_quality/make_batches.py"), str(batches)],
        check=True,
        capture_output=True,
    )
    client = minio.client()
    client.make_bucket("landing")
    client.fput_object("landing", "wine_quality/clean.csv", str(batches / "clean.csv"))
    package = tmp_path / "wine_quality.yaml"
    subprocess.run(
        [sys.executable, str(REPO / "pipelines/wine_quality/pipeline.py"), str(package)],
        check=True,
        capture_output=True,
    )
    model, run_name = unique("wine_venv"), unique("mlcd-run")
    parameters = {
        "data_uri": "s3://landing/wine_quality/clean.csv",
        "s3_endpoint": f"http://{minio.endpoint}",
        "mlflow_tracking_uri": mlflow_uri,
        "model_name": model,
        "git_commit": "0123abcd",
        "pipeline_version": "venv",
        "n_estimators": 10,
        "run_alias": "mlcd-run-alias",
        "run_name": run_name,
    }
    # Besides the task's own packages, only the S3 credentials (from the Secret on a cluster).
    env = wheelhouse.task_environment(wheels)
    env |= {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key}

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(package), str(tmp_path / "root"), json.dumps(parameters)],
        env=env,
        capture_output=True,
        text=True,
        timeout=2700,
        cwd=tmp_path,
    )
    took = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\npipeline in a fresh venv per task: {took:.0f} s wall, "
        f"{children.ru_utime + children.ru_stime:.0f} s CPU (exit {done.returncode})",
        flush=True,
    )

    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    outputs = json.loads(done.stdout.split("OUTPUTS ", 1)[1].splitlines()[0])
    registry = MlflowClient(tracking_uri=mlflow_uri)
    version = registry.get_model_version_by_alias(model, "mlcd-run-alias")
    assert outputs["model_version"] == version.version
    assert version.tags["mlcd.run_name"] == run_name
    assert float(json.loads(outputs["metrics"])["accuracy"]) > 0.8
