"""`/status`: what runs and what answers in this process, for people (never readiness): the store, the bus,
every supervised worker, and whether each outside system answers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from mlcd import logs, metrics
from mlcd.runner import ServiceHost


class AdapterHealth:
    """Pings each outside system now and then: reported on `/status` and as `mlcd_adapter_up`, never
    as readiness (a process that cannot reach MLflow can still take webhooks and do much of its job)."""

    def __init__(self, systems: dict[str, Any], interval_s: float, timeout_s: float = 10.0) -> None:
        self.systems = systems
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last: dict[str, str | None] = {}

    async def check(self) -> dict[str, str | None]:
        for name, system in self.systems.items():
            try:
                await asyncio.wait_for(system.ping(), self.timeout_s)
                self.last[name] = None
            except TimeoutError:
                self.last[name] = f"no answer within {self.timeout_s:g}s"
            except Exception as e:  # a health check reports any failure by name instead of raising it
                self.last[name] = logs.without_url_credentials(f"{type(e).__name__}: {e}")
            metrics.ADAPTER_UP.labels(name).set(0 if self.last[name] else 1)
        return dict(self.last)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass


def router(host: ServiceHost, health: AdapterHealth) -> APIRouter:
    """`/status` checks every outside system afresh (the access matrix reads each adapter's failure there)."""
    status_router = APIRouter(tags=["ops"])

    @status_router.get(
        "/status", summary="Workers and outside systems: what runs, what answers (not readiness)"
    )
    async def status() -> dict[str, Any]:
        return {
            **await host.connections(),
            "workers": host.supervisor.health(),
            "adapters": await health.check(),
        }

    return status_router
