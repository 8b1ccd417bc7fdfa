"""Model versions whose files live in S3, registered in a real MLflow, for the KServe tests.

Versions 1 and 2 are the good classifiers of `serving_models`; version 3 was trained on five features
but declares four, so the real model raises on every request (MLServer answers 500): the candidate the
analysis must roll back. `infer_body` is the Open Inference Protocol request MLServer's MLflow runtime
takes for them (one named FP64 input per column of the signature).
"""

from __future__ import annotations

from typing import Any

from tests.support import mlflow_s3

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GOOD, ALSO_GOOD, BROKEN = "1", "2", "3"


def register(tracking_uri: str, model: str, store: mlflow_s3.S3Store) -> list[str]:
    """Versions 1 to 3 of `model`, their files under s3://<store.bucket>/<model>/."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment(f"kserve-{model}", artifact_location=f"s3://{store.bucket}/{model}")
    rng = np.random.default_rng(7)
    x = pd.DataFrame(rng.uniform(0.1, 8.0, size=(120, 4)), columns=FEATURES)
    y = (x["petal_length"] > 3.0).astype(int).to_numpy()
    wide = np.column_stack([x.to_numpy(), rng.uniform(0.1, 8.0, size=120)])
    good = LogisticRegression(max_iter=200).fit(x, y)
    also_good = LogisticRegression(C=0.1, max_iter=200).fit(x, y)
    broken = LogisticRegression(max_iter=200).fit(wide, y)
    signature = infer_signature(x, good.predict(x))
    versions: list[str] = []
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow_s3.client_env(store):
        for estimator in (good, also_good, broken):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.log_metric("accuracy", 0.95)
                info = mlflow.sklearn.log_model(
                    estimator,
                    name="model",
                    registered_model_name=model,
                    pip_requirements=["scikit-learn"],
                    serialization_format="cloudpickle",  # a skops save asks MLServer for trusted types
                    signature=signature,
                )
            versions.append(str(info.registered_model_version))
    assert versions == [GOOD, ALSO_GOOD, BROKEN], versions
    return versions


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": [row[i] for row in rows]}
            for i, name in enumerate(FEATURES)
        ]
    }
