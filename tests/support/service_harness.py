"""Hand one event to a service's handlers the way the runtime does, in one unit of work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.service import ServiceSpec, bind
from mlcd.store.unit_of_work import UnitOfWork


async def deliver(
    engine: AsyncEngine, service: ServiceSpec, payload: events.Payload, ports: Mapping[str, Any]
) -> list[events.Payload]:
    """Run the service's handlers of `payload`'s type and commit; the payloads they emitted, in order."""
    envelope = events.new_event(payload, source="test/harness")
    async with engine.begin() as conn:
        uow = UnitOfWork(conn, service.source, cause=envelope)
        for handler in service.handlers[type(payload)]:
            await bind(handler, ports)(envelope, uow)
        emitted = [e.data for e in uow.emitted]
        await uow.flush()
    return emitted
