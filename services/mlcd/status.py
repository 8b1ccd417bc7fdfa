"""`/status`: what runs and what answers in this process, for people (never readiness): the store, the bus,
every supervised worker, and whether each outside system answers."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from fastapi import APIRouter

from mlcd import logs, metrics
from mlcd.runner import ServiceHost


class AdapterHealth:
    """Pings each outside system now and then: reported on `/status` and as `mlcd_adapter_up`, never
    as readiness (a process that cannot reach MLflow can still take webhooks and do much of its job).

    `/status` is public, so a request never costs more than one round of pings: results younger than
    `fresh_s` are answered as they are, and callers arriving while a round runs share it."""

    def __init__(
        self, systems: dict[str, Any], interval_s: float, timeout_s: float = 10.0, fresh_s: float = 1.0
    ) -> None:
        self.systems = systems
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.fresh_s = fresh_s
        self.last: dict[str, str | None] = {}
        self._checked_at = -math.inf
        self._round: asyncio.Future[dict[str, str | None]] | None = None

    async def current(self) -> dict[str, str | None]:
        """Each system mapped to why it does not answer, or None: as last seen when that was recent."""
        if time.monotonic() - self._checked_at < self.fresh_s:
            return dict(self.last)
        return await self.check()

    async def check(self) -> dict[str, str | None]:
        """A round of pings, all systems at once; joins the round already running, if one is."""
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._ping_all())
        return dict(await asyncio.shield(self._round))

    async def _ping_all(self) -> dict[str, str | None]:
        names = list(self.systems)
        problems = await asyncio.gather(*(self._ping(self.systems[name]) for name in names))
        for name, problem in zip(names, problems, strict=True):
            self.last[name] = problem
            metrics.ADAPTER_UP.labels(name).set(0 if problem else 1)
        self._checked_at = time.monotonic()
        return dict(self.last)

    async def _ping(self, system: Any) -> str | None:
        try:
            await asyncio.wait_for(system.ping(), self.timeout_s)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except Exception as e:  # a health check reports any failure by name instead of raising it
            return logs.without_url_credentials(f"{type(e).__name__}: {e}")
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass


def router(host: ServiceHost, health: AdapterHealth) -> APIRouter:
    """`/status`: the store and the bus checked now, the workers, and the outside systems as pinged within
    the last `health.fresh_s` seconds (the access matrix reads each adapter's failure there)."""
    status_router = APIRouter(tags=["ops"])

    @status_router.get(
        "/status", summary="Workers and outside systems: what runs, what answers (not readiness)"
    )
    async def status() -> dict[str, Any]:
        return {
            **await host.connections(),
            "workers": host.supervisor.health(),
            "adapters": await health.current(),
        }

    return status_router
