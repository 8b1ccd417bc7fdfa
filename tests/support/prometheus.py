"""A real Prometheus (Debian's `prometheus` binary) on a free loopback port, scraping given targets."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from tests.support import processes


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "prometheus"], check=True, capture_output=True)
        found = shutil.which("prometheus")
    assert found is not None, "apt-get install prometheus did not provide the binary"
    return found


@contextmanager
def running(
    targets: list[str], folder: Path, scrape_interval_s: float = 0.5, discovered: Path | None = None
) -> Iterator[str]:
    """Prometheus scraping `targets` (host:port, path /metrics); yields its URL once it is ready.

    With `discovered`, it also scrapes the targets listed in that file (Prometheus' file-based service
    discovery, re-read when the file changes): write it with `set_discovered`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    jobs: list[dict[str, object]] = [{"job_name": "mlcd", "static_configs": [{"targets": targets}]}]
    if discovered is not None:
        if not discovered.exists():
            set_discovered(discovered, [])
        jobs.append(
            {
                "job_name": "discovered",
                "file_sd_configs": [{"files": [str(discovered)], "refresh_interval": "1s"}],
            }
        )
    config = {
        "global": {"scrape_interval": f"{int(scrape_interval_s * 1000)}ms", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    server = processes.start(
        [
            binary(),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        folder / "prometheus.log",
    )
    try:
        processes.wait_until(lambda: _ready(url), 60, "prometheus", server)
        yield url
    finally:
        processes.stop(server)


def set_discovered(path: Path, groups: list[dict[str, object]]) -> None:
    """Replace the discovered targets: a list of {"targets": [host:port], "labels": {...}} (atomically)."""
    import json

    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(groups))
    scratch.replace(path)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def target_up(url: str) -> bool:
    """True once every target has been scraped successfully."""
    try:
        active = httpx.get(f"{url}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    return bool(active) and all(t["health"] == "up" for t in active)
