"""The inbox: which events a consumer group has already handled (effectively-once handlers)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import inbox


async def seen(conn: AsyncConnection, group: str, event_id: str) -> bool:
    row = await conn.scalar(
        select(inbox.c.event_id).where(inbox.c.consumer_group == group, inbox.c.event_id == event_id)
    )
    return row is not None


async def record(conn: AsyncConnection, group: str, event_id: str, event_type: str) -> None:
    await conn.execute(
        insert(inbox).values(
            consumer_group=group, event_id=event_id, event_type=event_type, handled_at=datetime.now(UTC)
        )
    )
