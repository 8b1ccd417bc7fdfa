"""Small real scikit-learn model versions registered in a real MLflow server, for serving tests.

Version 1 and 2 classify four features; version 3 takes the log of its inputs first, so it predicts
well on positive inputs and fails (NaN) on any negative one: a canary that breaks under a data shift.
"""

from __future__ import annotations

from typing import Any

GOOD_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
SHIFTED_ROWS = [[-5.1, 3.5, 1.4, 0.2], [6.7, -3.0, 5.2, 2.3]]


def register_versions(tracking_uri: str, model: str) -> list[str]:
    """Register versions 1, 2 and 3 of `model`; returns their version numbers."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(7)
    x = rng.uniform(0.1, 8.0, size=(120, 4))
    y = (x[:, 2] > 3.0).astype(int)
    estimators: list[Any] = [
        LogisticRegression(max_iter=200),
        LogisticRegression(C=0.1, max_iter=200),
        make_pipeline(FunctionTransformer(np.log), LogisticRegression(max_iter=200)),
    ]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"serving-{model}")
    versions: list[str] = []
    client = MlflowClient(tracking_uri=tracking_uri)
    for estimator in estimators:
        estimator.fit(x, y)
        with mlflow.start_run():
            mlflow.log_metric("accuracy", float(estimator.score(x, y)))
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                registered_model_name=model,
                pip_requirements=["scikit-learn"],
                serialization_format="cloudpickle",
            )
        versions.append(str(info.registered_model_version))
    assert client.get_registered_model(model).name == model
    return versions


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
