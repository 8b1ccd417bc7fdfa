"""The reference pipeline's Feast variant: the training set comes from a Feast feature service.

Labels arrive as batches (CSV: wine_id, event_timestamp, target, at `data_uri`); the 13 measurements come
from the feature service `feature_service` of the Feast project that mlcd's builder applied (the model's
policy `features`, features/wine_quality in this repository) to `feast_registry`. Training and
registering are the CSV pipeline's components, carried here as component YAML (refresh_components.py).
Compile with `python pipeline.py OUT.yaml` (or `mlcd pipelines compile pipelines/wine_quality_feast`).
"""

import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, components, dsl, kubernetes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import training_set  # noqa: E402 - this folder's own module, after the path is set

train_model = components.load_component_from_file(str(HERE / "train_model.yaml"))
register_model = components.load_component_from_file(str(HERE / "register_model.yaml"))

S3_CREDENTIALS_SECRET = "mlcd-s3-credentials"
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dsl.pipeline(
    name="wine-quality-feast",
    description="Build the training set from a Feast feature service, then train, evaluate and register.",
)
def wine_quality_feast(
    data_uri: str,
    mlflow_tracking_uri: str,
    feast_registry: str,
    data_etag: str = "",
    data_version_id: str = "",
    feast_project: str = "wine_quality",
    feature_service: str = "wine_quality_training",
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
    loaded = training_set.load_training_set(
        labels_uri=data_uri,
        labels_etag=data_etag,
        labels_version_id=data_version_id,
        feast_registry=feast_registry,
        feast_project=feast_project,
        feature_service=feature_service,
        s3_endpoint=s3_endpoint,
        min_rows=min_rows,
    )
    kubernetes.use_secret_as_env(
        loaded,
        secret_name=s3_credentials_secret,
        secret_key_to_env={key: key for key in S3_CREDENTIAL_KEYS},
        optional=True,
    )
    trained = train_model(
        batch=loaded.outputs["training_set"],
        n_estimators=n_estimators,
        test_fraction=test_fraction,
        random_state=random_state,
        fail_on_purpose=fail_on_purpose,
    )
    registered = register_model(
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
        task.set_caching_options(False)
    outputs = NamedTuple("Outputs", [("model_version", str), ("metrics", str)])  # type: ignore[misc]  # noqa: UP014 - KFP reads the functional form
    return outputs(registered.outputs["model_version"], trained.outputs["Output"])


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "wine_quality_feast.yaml"
    compiler.Compiler().compile(wine_quality_feast, target)
    print(f"compiled {target}")
