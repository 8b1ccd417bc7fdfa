"""The deployer's handlers over one serving world's ports, its timer ticked in real time (KServe, Seldon)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.deployer import handlers
from mlcd.store import rollouts
from tests.support import service_harness


@dataclass(frozen=True)
class DeployerDriver:
    engine: AsyncEngine
    model: str
    ports: dict[str, Any]
    splits: Callable[[], object]  # the traffic splits the stand-in applied so far, for a timeout's message

    async def approve(self, version: str) -> None:
        approval = events.PromotionApproved(model=self.model, model_version=version)
        await service_harness.deliver(self.engine, handlers.SERVICE, approval, self.ports)

    async def latest(self) -> rollouts.Rollout:
        async with self.engine.connect() as conn:
            found = await rollouts.latest(conn, self.model)
        assert found is not None
        return found

    async def run_until(self, states: set[str], timeout_s: float = 400) -> rollouts.Rollout:
        """Tick the deployer until the latest rollout reaches one of `states`."""
        deadline = time.monotonic() + timeout_s
        while True:
            latest = await self.latest()
            if latest.state in states:
                return latest
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout still {latest.as_dict()}; splits {self.splits()}")
            await service_harness.tick(self.engine, handlers.SERVICE, self.ports)
            await asyncio.sleep(0.5)

    async def champion(self) -> str | None:
        found = await self.ports["registry"].version_by_alias(self.model, handlers.CHAMPION)
        return None if found is None else str(found.version)
