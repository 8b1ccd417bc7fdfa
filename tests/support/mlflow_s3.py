"""A real `mlflow server` whose artifacts live in S3 (the MinIO gateway or moto), as KServe needs them.

The server stores no artifacts itself (`--no-serve-artifacts`): clients write a version's files straight
to the bucket, so a version's download URI is `s3://bucket/…`, the kind of URI KServe's storage
initializer reads. `S3Store.env()` is what a client (MLflow, kserve-storage) needs to reach the bucket.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import minio_gateway, processes


@dataclass(frozen=True)
class S3Store:
    endpoint_url: str  # http://host:port
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        """Variables both MLflow's S3 client and kserve-storage read."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
        }

    def make_bucket(self) -> None:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            s3.create_bucket(Bucket=self.bucket)


@contextmanager
def client_env(store: S3Store) -> Iterator[None]:
    """The store's variables in this process while MLflow's client uploads a version's files."""
    saved = {key: os.environ.get(key) for key in store.env()}
    os.environ.update(store.env())
    _forget_s3_clients()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_s3_clients()


def _forget_s3_clients() -> None:
    """boto3's default session keeps the first credentials it resolved for the life of the process, and
    MLflow caches its S3 clients by endpoint: forget both, so the variables in effect now are the ones used
    (else a worker whose first upload went to moto signs every later MinIO upload with moto's key)."""
    import boto3
    from mlflow.store.artifact import s3_artifact_repo

    boto3.DEFAULT_SESSION = None
    s3_artifact_repo._cached_get_s3_client.cache_clear()


@contextmanager
def minio_s3(folder: Path, bucket: str) -> Iterator[S3Store]:
    """The MinIO S3 gateway (tests/support/minio_gateway.py) with `bucket` created."""
    gateway = minio_gateway.start_gateway(folder)
    try:
        store = S3Store(f"http://{gateway.endpoint}", gateway.access_key, gateway.secret_key, bucket)
        store.make_bucket()
        yield store
    finally:
        gateway.stop()


@contextmanager
def moto_s3(folder: Path, bucket: str) -> Iterator[S3Store]:
    """moto's S3 server on a free port, with `bucket` created."""
    folder.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    server = processes.start(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        folder / "moto.log",
    )
    try:
        processes.wait_until(lambda: processes.port_open(port), 30, "moto_server", server)
        store = S3Store(f"http://127.0.0.1:{port}", "testing", "testing", bucket)
        store.make_bucket()
        yield store
    finally:
        processes.stop(server)


@contextmanager
def mlflow_server(folder: Path, default_root: str) -> Iterator[str]:
    """`mlflow server` with a SQLite store and no artifact proxy; yields its tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    server = processes.start(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            default_root,
            "--no-serve-artifacts",
        ],
        folder / "mlflow.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "GUNICORN_CMD_ARGS": "--timeout 120"},
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{uri}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        processes.wait_until(healthy, 120, "mlflow server", server)
        yield uri
    finally:
        processes.stop(server)
