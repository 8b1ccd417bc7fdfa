"""The embedded MLflow server of `mlcd up`: SQLite store and artifacts under MLCD_HOME.

Started as a child process, reused when one already answers on the port, stopped on exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from mlcd import logs
from mlcd.errors import AdapterUnavailable

log = logs.get(__name__)


async def healthy(uri: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(f"{uri}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


class EmbeddedMlflow:
    def __init__(self, home: Path, port: int) -> None:
        self.root = home / "mlflow"
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 120) -> None:
        if await healthy(self.uri):
            log.info("reusing the MLflow server already running", uri=self.uri)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        argv = [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
            "--artifacts-destination",
            str((self.root / "artifacts").resolve()),
            "--serve-artifacts",
        ]
        self._process = _spawn(argv, self.root / "server.log")
        log.info("starting the embedded MLflow server", uri=self.uri, pid=self._process.pid)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if await healthy(self.uri):
                return
            if self._process.poll() is not None:
                raise AdapterUnavailable(f"MLflow server exited; see {self.root / 'server.log'}")
            await asyncio.sleep(0.25)
        raise AdapterUnavailable(
            f"MLflow server not ready after {timeout_s}s; see {self.root / 'server.log'}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
