"""mlcd's rule for what a runtime can load, held against the runtime itself: MLServer's sklearn runtime
(what KServe's kserve-mlserver and Seldon run for `model_format: sklearn`), from `.venv-mlserver`."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from mlcd.adapters import runtimes
from mlcd.adapters.mlflow import mlmodel_flavors
from tests.support import mlserver, processes


def _save(folder: Path, serialization_format: str) -> Path:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(1).uniform(size=(60, 4))
    estimator = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    mlflow.sklearn.save_model(estimator, folder, serialization_format=serialization_format)
    return folder


def _serves(model_dir: Path, folder: Path) -> bool:
    """Whether MLServer's sklearn runtime loads the folder and answers a v2 inference request."""
    server = mlserver.start(model_dir, "wine", folder, implementation="mlserver_sklearn.SKLearnModel")
    try:
        processes.wait_until(lambda: server.ready() or not server.alive(), 60, "mlserver")
        if not server.ready():
            return False
        row = [0.9, 0.1, 0.1, 0.1]
        answer = httpx.post(
            f"{server.url}/v2/models/wine/infer",
            json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]},
            timeout=10,
        )
        return answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [1]
    finally:
        server.stop()


@pytest.mark.parametrize("serialization_format", ["cloudpickle", "skops"])
def test_the_sklearn_rule_says_what_mlservers_sklearn_runtime_really_loads(
    tmp_path: Path, serialization_format: str
) -> None:
    """MLflow 3 saves sklearn models as skops by default (model.skops), which MLServer's sklearn runtime
    cannot find; a cloudpickle save (model.pkl) it serves. mlcd's rule must agree with it both ways."""
    mlserver.require()
    model_dir = _save(tmp_path / "model", serialization_format)
    flavors = mlmodel_flavors("", str(model_dir))  # the adapter's own MLmodel reading

    problem = runtimes.flavor_problem("sklearn", "2", flavors)
    served = _serves(model_dir, tmp_path / "mlserver")

    assert {"python_function", "sklearn"} <= set(flavors)
    assert served == (problem is None), (served, problem)
    assert served == (serialization_format == "cloudpickle")
    if problem is not None:
        assert "model.skops" in problem and "model_format to mlflow" in problem
