"""`mlcd serve SERVICE` in a process of its own, as the Helm chart runs it: start, kill -9, restart, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import processes

REPO = Path(__file__).resolve().parents[2]
MLCD = str(Path(sys.executable).parent / "mlcd")


class ServiceProcess:
    """One service process; its output goes to `<log_dir>/<name>.log` (appended across restarts)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = processes.free_port()
        self.env = {**env, "MLCD_HTTP_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self, ready_timeout_s: float = 90) -> ServiceProcess:
        """Start the service and wait until it answers /healthz."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [MLCD, "serve", self.name],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=REPO,
                start_new_session=True,
            )
        self.process.log_path = str(self.log_path)  # type: ignore[attr-defined]
        processes.wait_until(self.alive, ready_timeout_s, f"mlcd serve {self.name}", self.process)
        return self

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        """Its /metrics text, "" while it does not answer."""
        try:
            return httpx.get(f"{self.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    def kill(self) -> None:
        """kill -9 the whole process group: no drain, no clean-up, as a node failure would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.kills += 1

    def restart(self) -> ServiceProcess:
        self.kill()
        return self.start()

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait for the drain; kill what is left. The exit code of a clean stop, else None."""
        if self.process is None or self.process.poll() is not None:
            return None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
