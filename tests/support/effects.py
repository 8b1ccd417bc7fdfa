"""A test handler's visible effect: one row per handling, written in the handler's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events
from mlcd.store.unit_of_work import UnitOfWork

_metadata = MetaData()

effects = Table(
    "test_effects",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("note", String(200), nullable=False),
    Column("worker", String(200), nullable=False),
)


async def create(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)


async def write(conn: AsyncConnection, event: events.Envelope[Any], worker: str = "") -> None:
    note = str(getattr(event.data, "key", "") or getattr(event.data, "reason", ""))
    await conn.execute(insert(effects).values(event_id=event.id, model=event.key, note=note, worker=worker))


async def write_handled(uow: UnitOfWork, event: events.Envelope[Any], worker: str = "") -> None:
    """The effect and the event's inbox row in one transaction: exactly one row per event, crash or not."""
    async with uow.transaction(completes=True) as tx:
        await write(tx.connection, event, worker)


async def rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(select(effects).order_by(effects.c.id)))
