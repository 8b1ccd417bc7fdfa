"""The wine-quality pipeline's lightweight components: load a batch, train and evaluate, register in MLflow.

KFP ships each function's source into its task, so every import lives inside the function body, and each
component declares, pinned, every package it imports (`packages_to_install`, plus kfp itself): on a
cluster each task starts from the bare `BASE_IMAGE` and installs exactly these. The pins are the versions
of mlcd's own environment, so the embedded local runner (which runs tasks in that environment) finds them
installed already and changes nothing; tests/unit/test_pipeline_pins.py keeps the two in step, and
tests/integration/test_pipeline_venv.py runs the pipeline with a fresh virtualenv per task, as a cluster
would.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

BASE_IMAGE = "python:3.11-slim"

PANDAS = "pandas==3.1.1"
SCIKIT_LEARN = "scikit-learn==1.9.1"
LOAD_PACKAGES = [PANDAS, SCIKIT_LEARN, "minio==7.2.20"]
TRAIN_PACKAGES = [PANDAS, SCIKIT_LEARN]
# The MLflow client without the server (its tracking REST client and the sklearn flavour), skops for the
# model format register_model saves.
REGISTER_PACKAGES = ["mlflow-skinny==3.17.2", SCIKIT_LEARN, "skops==0.16.0", PANDAS]


@dsl.component(base_image=BASE_IMAGE, packages_to_install=LOAD_PACKAGES)
def load_batch(
    data_uri: str,
    data_etag: str,
    data_version_id: str,
    s3_endpoint: str,
    min_rows: int,
    batch: Output[Dataset],
) -> int:
    """Read the CSV batch at `data_uri` (s3://bucket/key, file:// URI or path), check its shape, keep it.

    Pinned to the bytes mlcd validated: `data_version_id` reads that object version; `data_etag` reads the
    object only while its ETag is that one (S3 If-Match; a file's MD5), and fails naming both ETags when it
    was overwritten since. Both empty: the object as it is now.
    S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from a
    parameter: KFP shows parameters in its UI and keeps them in the run record.
    """
    import hashlib
    import io
    import os
    import urllib.parse
    from pathlib import Path

    import pandas as pd
    from sklearn.datasets import load_wine

    def changed(now: str) -> ValueError:
        pinned = f"version {data_version_id}" if data_version_id else f"etag {data_etag}"
        return ValueError(
            f"{data_uri} changed since it was validated: {pinned} was validated, the object is now etag "
            f"{now}; upload it again as a new key to train on it"
        )

    parsed = urllib.parse.urlparse(data_uri)
    if data_version_id and parsed.scheme != "s3":
        raise ValueError(f"{data_uri} has no object versions, but version {data_version_id} was asked for")
    if parsed.scheme == "s3":
        from minio import Minio
        from minio.error import S3Error

        if not s3_endpoint:
            raise ValueError(f"{data_uri} is an S3 URI but no s3_endpoint was given")
        bucket, _, key = data_uri.removeprefix("s3://").partition("/")  # the key as stored, not URL-decoded
        secure = s3_endpoint.startswith("https://")
        endpoint = s3_endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
        client = Minio(
            endpoint,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            secure=secure,
        )
        try:
            response = client.get_object(
                bucket,
                key,
                version_id=data_version_id or None,
                request_headers={"If-Match": f'"{data_etag}"'} if data_etag else None,
            )
        except S3Error as e:
            if e.code not in ("PreconditionFailed", "NoSuchVersion"):
                raise
            raise changed(client.stat_object(bucket, key).etag) from e
        try:
            raw = response.read()
        finally:
            response.close()
            response.release_conn()
    elif parsed.scheme == "file":
        raw = Path(urllib.parse.unquote(parsed.path)).read_bytes()
    elif parsed.scheme == "":
        raw = Path(data_uri).read_bytes()
    else:
        raise ValueError(f"unsupported data URI scheme {parsed.scheme!r} in {data_uri}")
    if data_etag and parsed.scheme != "s3":
        # A file's ETag is what the embedded object watcher reported for it: the MD5 of its bytes.
        now = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if now != data_etag:
            raise changed(now)

    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{data_uri} is not a readable CSV file: {e}") from e
    expected = [*load_wine().feature_names, "target"]
    missing = [column for column in expected if column not in frame.columns]
    if missing:
        raise ValueError(f"{data_uri} lacks the columns {', '.join(missing)}")
    frame = frame[expected].apply(pd.to_numeric, errors="coerce")
    holes = {column: int(count) for column, count in frame.isna().sum().items() if count}
    if holes:
        raise ValueError(f"{data_uri} has empty or non-numeric values: {holes}")
    unknown = sorted(set(frame["target"].unique()) - {0, 1, 2})
    if unknown:
        raise ValueError(f"{data_uri} has unknown classes in target: {unknown}")
    if len(frame) < min_rows:
        raise ValueError(f"{data_uri} has {len(frame)} rows; training needs at least {min_rows}")
    frame["target"] = frame["target"].astype(int)
    frame.to_csv(batch.path, index=False)
    print(f"loaded {len(frame)} rows from {data_uri}")
    return len(frame)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=TRAIN_PACKAGES)
def train_model(
    batch: Input[Dataset],
    n_estimators: int,
    test_fraction: float,
    random_state: int,
    fail_on_purpose: bool,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Train a random forest, evaluate it on a held-out split; returns the figures as JSON."""
    import json
    import pickle

    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    from sklearn.model_selection import train_test_split

    if fail_on_purpose:
        raise RuntimeError("fail_on_purpose is set: the training task fails as asked")
    frame = pd.read_csv(batch.path)
    features, target = frame.drop(columns=["target"]), frame["target"]
    stratify = target if target.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_fraction, random_state=random_state, stratify=stratify
    )
    classifier = RandomForestClassifier(n_estimators=n_estimators, random_state=random_state)
    classifier.fit(x_train, y_train)
    predicted = classifier.predict(x_test)
    figures = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        "train_rows": float(len(x_train)),
        "test_rows": float(len(x_test)),
    }
    recalls = recall_score(y_test, predicted, labels=[0, 1, 2], average=None, zero_division=0)
    figures.update({f"recall_class_{label}": float(value) for label, value in enumerate(recalls)})
    for name, value in figures.items():
        metrics.log_metric(name, value)
    with open(model.path, "wb") as out:
        pickle.dump(classifier, out)
    model.metadata["framework"] = "scikit-learn"
    print(f"evaluated on {len(x_test)} held-out rows: {figures}")
    return json.dumps(figures, sort_keys=True)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=REGISTER_PACKAGES)
def register_model(
    model: Input[Model],
    figures: str,
    model_name: str,
    mlflow_tracking_uri: str,
    data_uri: str,
    git_commit: str,
    pipeline_version: str,
    n_estimators: int,
    test_fraction: float,
    run_alias: str,
    run_name: str,
) -> NamedTuple("Registered", [("model_version", str), ("mlflow_run_id", str)]):  # type: ignore[misc]
    """Log params, metrics, tags and the model to MLflow and register a version under `model_name`.

    A run mlcd started (`run_name` set) registers its version with the tags `mlcd.registered_by` and
    `mlcd.run_name` from the start, so MLflow's model-version-created webhook tells mlcd it was its own.
    """
    import json
    import pickle
    from collections import namedtuple

    import mlflow
    import sklearn
    from mlflow import MlflowClient

    with open(model.path, "rb") as source:
        classifier = pickle.load(source)
    tags = {"data_uri": data_uri, "git_commit": git_commit, "pipeline_version": pipeline_version}
    mlcd_tags = {"mlcd.registered_by": "mlcd-trainer", "mlcd.run_name": run_name} if run_name else {}
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking_uri)  # else an inherited MLFLOW_REGISTRY_URI would win
    mlflow.set_experiment(model_name)
    with mlflow.start_run() as run:
        mlflow.log_params(
            {"n_estimators": n_estimators, "test_fraction": test_fraction, "model": "random_forest"}
        )
        mlflow.log_metrics(json.loads(figures))
        mlflow.set_tags(tags)
        info = mlflow.sklearn.log_model(
            classifier,
            name="model",
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            skops_trusted_types=["sklearn.tree._tree.Tree"],  # the forest's own trees, written just above
        )
    # Registered with its tags in one call: the created-webhook carries only the tags given at creation.
    registered = mlflow.register_model(info.model_uri, model_name, tags={**tags, **mlcd_tags})
    version = str(registered.version)
    if run_alias:
        MlflowClient(tracking_uri=mlflow_tracking_uri).set_registered_model_alias(
            model_name, run_alias, version
        )
    print(f"registered {model_name} version {version} from MLflow run {run.info.run_id}")
    outputs = namedtuple("Registered", ["model_version", "mlflow_run_id"])
    return outputs(version, run.info.run_id)
