"""ML Metadata: the chain's steps as MLMD artifacts (data batches, validation results, model versions),
executions (validations, training runs, gates, rollouts, rollbacks), their input and output events, and
one context per model.

ml-metadata 1.17.1, the newest with a Python 3.11 wheel, pins protobuf<5 while mlcd needs protobuf 6, so
the writer (`mlmd_writer.py` beside this file, which imports nothing of mlcd) runs as a child process in
a virtualenv of its own (MLCD_MLMD_PYTHON, `make mlmd-venv`), kept running and fed one JSON line per
export. The store's password reaches it on its stdin, never on its command line or environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from mlcd import logs, ports
from mlcd.config import Settings, mlmd_connection
from mlcd.errors import AdapterUnavailable, ConfigError, PermanentError, TemporaryError

log = logs.get(__name__)

WRITER = Path(__file__).with_name("mlmd_writer.py")
_LINE_LIMIT = 1 << 20


def _step(step: ports.LineageStep) -> dict[str, Any]:
    body = dataclasses.asdict(step)
    body["time"] = step.time.isoformat()
    return body


class MlmdExport:
    """Writes steps through the writer child; a dead or silent child is replaced on the next export."""

    name = "mlmd"

    def __init__(self, python: Path, connect: dict[str, Any], *, timeout_s: float = 30.0) -> None:
        self.python = python
        self._connect = connect
        self._timeout_s = timeout_s
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def export(self, steps: list[ports.LineageStep]) -> None:
        if not steps:
            return
        async with self._lock:
            child = await self._running()
            await self._ask(child, {"steps": [_step(s) for s in steps]})

    async def close(self) -> None:
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            child.kill()
            await child.wait()

    async def _running(self) -> asyncio.subprocess.Process:
        if self._child is not None and self._child.returncode is None:
            return self._child
        if not self.python.exists():
            raise ConfigError(
                f"MLCD_MLMD_PYTHON {self.python} does not exist: create it with `make mlmd-venv` "
                "(a virtualenv with ml-metadata==1.17.1)"
            )
        child = await asyncio.create_subprocess_exec(
            str(self.python),
            "-I",
            str(WRITER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        self._child = child
        log.info("MLMD writer started", pid=child.pid, python=str(self.python))
        await self._ask(child, {"connect": self._connect})
        return child

    async def _ask(self, child: asyncio.subprocess.Process, request: dict[str, Any]) -> None:
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(json.dumps(request).encode() + b"\n")
            await child.stdin.drain()
            line = await asyncio.wait_for(child.stdout.readline(), self._timeout_s)
        except (TimeoutError, ConnectionError) as e:
            await self._stop(child)
            raise AdapterUnavailable(f"the MLMD writer did not answer in {self._timeout_s:g} s") from e
        except asyncio.CancelledError:  # its answer would be read as the next request's: start afresh
            if self._child is child:
                self._child = None
            child.kill()
            raise
        if not line:
            await self._stop(child)
            raise AdapterUnavailable(
                f"the MLMD writer exited ({child.returncode}); it is restarted next time"
            )
        try:
            answer = json.loads(line)
        except ValueError:  # something in the writer printed to stdout: its answers can no longer be read
            await self._stop(child)
            raise AdapterUnavailable(f"the MLMD writer answered {line[:120]!r}, not JSON") from None
        if answer.get("ok"):
            return
        if "connect" in request:  # a writer that could not reach its store is no use: start afresh
            await self._stop(child)
        if answer.get("retryable") or "connect" in request:
            raise TemporaryError(f"MLMD store: {answer.get('error')}")
        raise PermanentError(f"MLMD store refused a step: {answer.get('error')}")

    async def _stop(self, child: asyncio.subprocess.Process) -> None:
        if self._child is child:
            self._child = None
        if child.returncode is None:
            child.kill()
            await child.wait()


def build(settings: Settings) -> MlmdExport | None:
    """The exporter when MLCD_MLMD_STORE is set, else None."""
    if not settings.mlmd_store:
        return None
    password = settings.mlmd_password.get_secret_value() if settings.mlmd_password else ""
    return MlmdExport(
        settings.mlmd_python,
        mlmd_connection(settings.mlmd_store, settings.home, password),
        timeout_s=settings.mlmd_timeout_s,
    )
