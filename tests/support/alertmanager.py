"""Debian's prometheus-alertmanager on loopback, its webhook receiver pointing at mlcd's alert hook."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from tests.support import processes


@dataclass(frozen=True)
class Alertmanager:
    url: str
    receiver_port: int

    def add_alert(self, labels: dict[str, str], annotations: dict[str, str] | None = None) -> None:
        """Post a firing alert through Alertmanager's v2 API, as Prometheus would."""
        alert = {
            "labels": labels,
            "annotations": annotations or {},
            "startsAt": datetime.now(UTC).isoformat(),
        }
        httpx.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def ensure_installed() -> str:
    """The alertmanager binary, installing the Debian package when it is missing."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus-alertmanager"],
            check=True,
            capture_output=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        binary = shutil.which("prometheus-alertmanager")
    assert binary is not None, "prometheus-alertmanager is not installed"
    return binary


def _config(receiver_port: int, token: str) -> dict[str, object]:
    return {
        "route": {
            "receiver": "mlcd",
            "group_by": ["alertname", "model"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "mlcd",
                "webhook_configs": [
                    {
                        "url": f"http://127.0.0.1:{receiver_port}/hooks/alertmanager",
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": token}},
                    }
                ],
            }
        ],
    }


@contextmanager
def running(tmp: Path, token: str) -> Iterator[Alertmanager]:
    """Alertmanager on a free port, delivering to a receiver port reserved for mlcd (serve mlcd on it)."""
    binary = ensure_installed()
    port, receiver_port = processes.free_port(), processes.free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "alertmanager.yml"
    config.write_text(yaml.safe_dump(_config(receiver_port, token)))
    process = processes.start(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={tmp / 'data'}",
        ],
        tmp / "alertmanager.log",
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        processes.wait_until(ready, 30, "alertmanager", process)
        yield Alertmanager(url, receiver_port)
    finally:
        processes.stop(process)
