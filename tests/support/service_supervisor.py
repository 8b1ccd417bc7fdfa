"""Keeps `mlcd serve` processes running as a kubelet would: whichever was killed is started again.

Fault tests kill services from anywhere (a trap in a proxy thread, the test's own schedule) through
`kill`, and the supervisor restarts them. A process that dies without being killed is an unexpected
exit, and `unexpected` names it with its log's tail.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tests.support.mlcd_service import ServiceProcess


@dataclass(frozen=True)
class Restart:
    service: str
    seconds: float  # from the kill until the new process answered /healthz


class Supervisor:
    def __init__(self, services: Mapping[str, ServiceProcess], poll_s: float = 0.1) -> None:
        self.services = dict(services)
        self.poll_s = poll_s
        self.restarts: list[Restart] = []
        self.unexpected: list[str] = []
        self._killed_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = asyncio.Event()

    def kill(self, name: str) -> None:
        """kill -9 the service now (callable from any thread); the supervisor starts it again."""
        with self._lock:
            self._killed_at[name] = time.monotonic()
        self.services[name].kill()

    async def start_all(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in self.services.values()))

    async def run(self) -> None:
        """Restart dead services until `stop` is called."""
        while not self._stop.is_set():
            dead = [name for name, s in self.services.items() if s.process and s.process.poll() is not None]
            await asyncio.gather(*(self._restart(name) for name in dead))
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    async def stop_all(self) -> None:
        self.stop()
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.services.values()))

    async def _restart(self, name: str) -> None:
        service = self.services[name]
        with self._lock:
            killed_at = self._killed_at.pop(name, None)
        if killed_at is None:
            self.unexpected.append(f"{name} exited by itself: {service.log()[-3000:]}")
            killed_at = time.monotonic()
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(service.start)
            except RuntimeError:  # killed again while starting (a trap fired early): start once more
                with self._lock:
                    if self._killed_at.pop(name, None) is None:
                        self.unexpected.append(f"{name} died while starting: {service.log()[-3000:]}")
                continue
            self.restarts.append(Restart(name, time.monotonic() - killed_at))
            return
