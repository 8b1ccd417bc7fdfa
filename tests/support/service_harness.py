"""Hand one event to a service's handlers, or run one tick of its timer, the way the runtime does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.service import ServiceSpec, bind
from mlcd.store.tables import outbox
from mlcd.store.unit_of_work import UnitOfWork


async def deliver(
    engine: AsyncEngine,
    service: ServiceSpec,
    payload: events.Payload,
    ports: Mapping[str, Any],
    *,
    event_id: str | None = None,
) -> list[events.Payload]:
    """Run the service's handlers of `payload`'s type and commit; the payloads they emitted, in order.

    A redelivery (the same `event_id` again) finds the event in the inbox and does nothing, as the
    runtime's consumer would.
    """
    envelope = events.new_event(payload, source="test/harness", id=event_id)
    before = await _last_seq(engine)
    uow = UnitOfWork(engine, service.source, envelope, group=service.group)
    if not await _handled(engine, service, envelope.id):
        for handler in service.handlers[type(payload)]:
            await bind(handler, ports)(envelope, uow)
        await uow.finish()
    return await _emitted_since(engine, before)


async def tick(engine: AsyncEngine, service: ServiceSpec, ports: Mapping[str, Any]) -> list[events.Payload]:
    """One tick of each of the service's timers; the payloads they emitted, in order."""
    before = await _last_seq(engine)
    for timer in service.timers:
        uow = UnitOfWork(engine, service.source)
        await bind(timer.run, ports)(uow)
        await uow.finish()
    return await _emitted_since(engine, before)


async def _handled(engine: AsyncEngine, service: ServiceSpec, event_id: str) -> bool:
    from mlcd.store import inbox

    async with engine.connect() as conn:
        return await inbox.seen(conn, service.group, event_id)


async def _last_seq(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.coalesce(func.max(outbox.c.seq), 0))) or 0)


async def _emitted_since(engine: AsyncEngine, seq: int) -> list[events.Payload]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
            .where(outbox.c.seq > seq)
            .order_by(outbox.c.seq)
        )
        found = []
        for row in rows:
            record = events.Record(
                topic=row.topic,
                key=row.key,
                value=row.value,
                headers=tuple((str(k), str(v).encode()) for k, v in row.headers),
            )
            decoded = events.decode(record)
            if isinstance(decoded, events.Envelope):
                found.append(decoded.data)
        return found
