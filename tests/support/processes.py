"""Start real servers for tests: free ports, readiness checks, and certain clean-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `check` until it holds; fail with the process's output if it died or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(process)}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s}s: {_tail(process) if process else ''}")


def _tail(process: subprocess.Popen[bytes]) -> str:
    log = getattr(process, "log_path", None)
    if log and Path(log).exists():
        return Path(log).read_text(errors="replace")[-3000:]
    return ""


def start(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, output to `log_path`."""
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
    process = subprocess.Popen(
        list(argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    process.log_path = str(log_path)  # type: ignore[attr-defined]
    process.log_file = log_file  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """Terminate the whole process group; kill it if it does not go."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    log_file = getattr(process, "log_file", None)
    if log_file is not None:
        log_file.close()
