"""KServe's data plane pieces, run for real from the MLServer virtualenv (`make mlserver-venv`).

`download(uri, folder, store)` is KServe's storage initializer: `kserve_storage.Storage.download`, in a
subprocess of `.venv-mlserver` (kserve-storage and MLServer cannot share the main venv's pins). `start`
runs `mlserver start` on a model folder, as KServe's MLServer runtime does for `modelFormat: mlflow`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import processes
from tests.support.mlflow_s3 import S3Store

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-mlserver"
PYTHON = VENV / "bin" / "python"

_DOWNLOAD = """
import sys
from kserve_storage import Storage
print(Storage.download(sys.argv[1], sys.argv[2]))
"""


class DownloadFailed(Exception):
    """kserve-storage could not download the URI; the message is its own error output."""


def available() -> bool:
    return (VENV / ".stamp").exists() and PYTHON.exists()


def require() -> None:
    assert available(), "the MLServer virtualenv is missing: run `make mlserver-venv`"


def download(uri: str, target: Path, store: S3Store | None, timeout_s: float = 120) -> Path:
    """Download `uri` into `target` with kserve-storage, as KServe's storage-initializer container."""
    require()
    target.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(target.parent)}
    if store is not None:
        env |= store.env()
    result = subprocess.run(
        [str(PYTHON), "-c", _DOWNLOAD, uri, str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        # The exception's own message, which may span lines, without the traceback above it.
        lines = result.stderr.strip().splitlines()
        start = max((i for i, line in enumerate(lines) if not line.startswith(" ")), default=0)
        start = max(
            (i for i, line in enumerate(lines) if "Error" in line or "Exception" in line), default=start
        )
        raise DownloadFailed(" ".join(lines[start:]) or f"exit {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class ModelServer:
    """One MLServer process serving one model folder."""

    name: str
    http_port: int
    metrics_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def ready(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/v2/models/{self.name}/ready", timeout=1)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        processes.stop(self.process)


def start(
    model_dir: Path, name: str, folder: Path, implementation: str = "mlserver_mlflow.MLflowRuntime"
) -> ModelServer:
    """`mlserver start` on `model_dir` under `name`; returns at once (poll `ready()`)."""
    require()
    folder.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = (processes.free_port() for _ in range(3))
    # parallel_workers 0: MLServer's inference worker processes die at start with this uvloop.
    settings = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "host": "127.0.0.1",
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(
        json.dumps({"name": name, "implementation": implementation, "parameters": {"uri": str(model_dir)}})
    )
    process = processes.start(
        [str(VENV / "bin" / "mlserver"), "start", str(folder)],
        folder / "mlserver.log",
        env={"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(VENV), "HOME": str(folder)},
        cwd=folder,
    )
    return ModelServer(name, http_port, metrics_port, process)
