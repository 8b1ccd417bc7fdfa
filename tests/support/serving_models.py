"""Small real scikit-learn model versions registered in a real MLflow server, for serving tests.

Version 1 and 2 classify four named features; version 3 takes the log of its inputs first, so it
predicts well on positive inputs and fails (NaN) on any negative one: a canary that breaks under a data
shift. Each is fitted on a DataFrame (scikit-learn keeps the feature names) and logged with its MLflow
signature; version 4 is version 1 logged without a signature, as the wine-quality pipeline logs its models.
"""

from __future__ import annotations

from typing import Any

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GOOD_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
SHIFTED_ROWS = [[-5.1, 3.5, 1.4, 0.2], [6.7, -3.0, 5.2, 2.3]]


def register_versions(tracking_uri: str, model: str) -> list[str]:
    """Register versions 1 to 4 of `model`; returns their version numbers."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(7)
    x = pd.DataFrame(rng.uniform(0.1, 8.0, size=(120, 4)), columns=FEATURES)
    y = (x["petal_length"] > 3.0).astype(int).to_numpy()
    first = LogisticRegression(max_iter=200)
    estimators: list[tuple[Any, bool]] = [  # (estimator, logged with its signature)
        (first, True),
        (LogisticRegression(C=0.1, max_iter=200), True),
        (make_pipeline(FunctionTransformer(np.log), LogisticRegression(max_iter=200)), True),
        (first, False),
    ]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"serving-{model}")
    versions: list[str] = []
    client = MlflowClient(tracking_uri=tracking_uri)
    for estimator, with_signature in estimators:
        estimator.fit(x, y)
        signature = infer_signature(x, estimator.predict(x)) if with_signature else None
        with mlflow.start_run():
            mlflow.log_metric("accuracy", float(estimator.score(x, y)))
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                registered_model_name=model,
                pip_requirements=["scikit-learn"],
                serialization_format="cloudpickle",
                signature=signature,
            )
        versions.append(str(info.registered_model_version))
    assert client.get_registered_model(model).name == model
    return versions


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
