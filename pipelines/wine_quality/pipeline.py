"""The reference training pipeline: load a wine batch, train and evaluate a classifier, register it in MLflow.

Compile with `python pipeline.py OUT.yaml` (or `mlcd pipelines compile pipelines/wine_quality`). The
components sit beside this file and are imported as the module `components`, so the folder must be on
`sys.path` when it is loaded (running this file does that by itself).
"""

import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import components

S3_CREDENTIALS_SECRET = "mlcd-s3-credentials"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dsl.pipeline(name="wine-quality", description="Train, evaluate and register the wine-quality classifier.")
def wine_quality(
    data_uri: str,
    mlflow_tracking_uri: str,
    data_etag: str = "",
    data_version_id: str = "",
    model_name: str = "wine_quality",
    git_commit: str = "",
    pipeline_version: str = "",
    n_estimators: int = 50,
    test_fraction: float = 0.25,
    random_state: int = 42,
    min_rows: int = 30,
    s3_endpoint: str = "",
    s3_credentials_secret: str = S3_CREDENTIALS_SECRET,
    fail_on_purpose: bool = False,
    run_alias: str = "",
    run_name: str = "",
) -> NamedTuple("Outputs", [("model_version", str), ("metrics", str)]):  # type: ignore[misc]
    loaded = components.load_batch(
        data_uri=data_uri,
        data_etag=data_etag,
        data_version_id=data_version_id,
        s3_endpoint=s3_endpoint,
        min_rows=min_rows,
    )
    # On a cluster the credentials come from a Kubernetes Secret (the local runner ignores this and
    # passes its own environment); optional, so batches read from elsewhere need no Secret.
    kubernetes.use_secret_as_env(
        loaded,
        secret_name=s3_credentials_secret,
        secret_key_to_env={key: key for key in S3_CREDENTIAL_KEYS},
        optional=True,
    )
    trained = components.train_model(
        batch=loaded.outputs["batch"],
        n_estimators=n_estimators,
        test_fraction=test_fraction,
        random_state=random_state,
        fail_on_purpose=fail_on_purpose,
    )
    registered = components.register_model(
        model=trained.outputs["model"],
        figures=trained.outputs["Output"],
        model_name=model_name,
        mlflow_tracking_uri=mlflow_tracking_uri,
        data_uri=data_uri,
        git_commit=git_commit,
        pipeline_version=pipeline_version,
        n_estimators=n_estimators,
        test_fraction=test_fraction,
        run_alias=run_alias,
        run_name=run_name,
    )
    for task in (loaded, trained, registered):
        task.set_caching_options(False)  # each run must read the batch anew and register a new version
    outputs = NamedTuple("Outputs", [("model_version", str), ("metrics", str)])  # type: ignore[misc]  # noqa: UP014 - KFP reads the functional form
    return outputs(registered.outputs["model_version"], trained.outputs["Output"])


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "wine_quality.yaml"
    compiler.Compiler().compile(wine_quality, target)
    print(f"compiled {target}")
