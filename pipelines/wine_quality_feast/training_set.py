"""The Feast variant's own component: the training set from a Feast feature service.

Like the CSV pipeline's components, every import lives inside the function and every package it imports
is pinned in `packages_to_install`. Feast 0.67 needs pandas<3, so this task's environment differs from
mlcd's own: mlcd's embedded local runner sees that and runs each task of this pipeline in a virtualenv of
its own (`use_venv=True`) rather than in mlcd's environment, where its pip would change mlcd's packages.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

BASE_IMAGE = "python:3.11-slim"
FEAST_PACKAGES = ["feast==0.67.0", "pandas==2.3.3", "minio==7.2.20"]


@dsl.component(base_image=BASE_IMAGE, packages_to_install=FEAST_PACKAGES)
def load_training_set(
    labels_uri: str,
    labels_etag: str,
    labels_version_id: str,
    feast_registry: str,
    feast_project: str,
    feature_service: str,
    s3_endpoint: str,
    min_rows: int,
    training_set: Output[Dataset],
) -> int:
    """The labelled wines at `labels_uri` (CSV: wine_id, event_timestamp, target) joined point-in-time with
    the feature service's features (`get_historical_features`), written as the CSV pipeline's batch: the
    13 measurements of scikit-learn's wine data set, then `target`.

    `feast_registry` is the registry mlcd's builder applied the feature repository to (a file path, s3://,
    gs://, or a SQLAlchemy URL for a SQL registry). S3 credentials come from the environment. The labels
    are read as mlcd validated them, like the CSV pipeline's batch: `labels_version_id` reads that object
    version, `labels_etag` only the object with that ETag (S3 If-Match; a file's MD5); empty: as it is now.
    """
    import hashlib
    import io
    import os
    import urllib.parse
    from pathlib import Path

    import pandas as pd
    from feast import FeatureStore, RepoConfig

    def changed(now: str) -> ValueError:
        pinned = f"version {labels_version_id}" if labels_version_id else f"etag {labels_etag}"
        return ValueError(
            f"{labels_uri} changed since it was validated: {pinned} was validated, the object is now etag "
            f"{now}; upload it again as a new key to train on it"
        )

    parsed = urllib.parse.urlparse(labels_uri)
    if labels_version_id and parsed.scheme != "s3":
        raise ValueError(
            f"{labels_uri} has no object versions, but version {labels_version_id} was asked for"
        )
    if parsed.scheme == "s3":
        from minio import Minio
        from minio.error import S3Error

        bucket, _, key = labels_uri.removeprefix("s3://").partition("/")
        client = Minio(
            s3_endpoint.removeprefix("https://").removeprefix("http://").rstrip("/"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            secure=s3_endpoint.startswith("https://"),
        )
        try:
            response = client.get_object(
                bucket,
                key,
                version_id=labels_version_id or None,
                request_headers={"If-Match": f'"{labels_etag}"'} if labels_etag else None,
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
    elif parsed.scheme in ("file", ""):
        raw = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else labels_uri).read_bytes()
    else:
        raise ValueError(f"unsupported labels URI scheme {parsed.scheme!r} in {labels_uri}")
    if labels_etag and parsed.scheme != "s3":
        now = hashlib.md5(raw, usedforsecurity=False).hexdigest()  # the embedded object watcher's ETag
        if now != labels_etag:
            raise changed(now)
    labels = pd.read_csv(io.BytesIO(raw))
    missing = [c for c in ("wine_id", "event_timestamp", "target") if c not in labels.columns]
    if missing:
        raise ValueError(f"{labels_uri} lacks the columns {', '.join(missing)}")
    labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], utc=True)
    labels["label_row"] = range(
        len(labels)
    )  # Feast returns rows in its own order; training keeps the batch's

    sql = feast_registry.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "sqlite")
    registry = {"registry_type": "sql", "path": feast_registry} if sql else feast_registry
    store = FeatureStore(
        config=RepoConfig(
            project=feast_project,
            provider="local",
            registry=registry,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
        )
    )
    service = store.get_feature_service(feature_service)
    joined = store.get_historical_features(entity_df=labels, features=service).to_df()
    joined = joined.sort_values("label_row").reset_index(drop=True)
    measurements = [f.name for view in service.feature_view_projections for f in view.features]
    frame = joined[[*measurements, "target"]]
    holes = {column: int(count) for column, count in frame.isna().sum().items() if count}
    if holes:
        raise ValueError(f"wines without features at their timestamp in {feature_service}: {holes}")
    if len(frame) < min_rows:
        raise ValueError(f"{labels_uri} has {len(frame)} rows; training needs at least {min_rows}")
    frame.to_csv(training_set.path, index=False)
    print(f"built {len(frame)} rows from feature service {feature_service}")
    return len(frame)
