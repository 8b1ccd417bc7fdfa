"""The inbox: which events a consumer group has already handled (effectively-once handlers)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import String, any_, bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import inbox


async def seen(conn: AsyncConnection, group: str, event_id: str) -> bool:
    row = await conn.scalar(
        select(inbox.c.event_id).where(inbox.c.consumer_group == group, inbox.c.event_id == event_id)
    )
    return row is not None


async def seen_among(conn: AsyncConnection, group: str, event_ids: Sequence[str]) -> set[str]:
    """Which of these events the group has already handled, in one query."""
    if not event_ids:
        return set()
    wanted = sorted(set(event_ids))
    among = (
        inbox.c.event_id == any_(bindparam("ids", wanted, type_=ARRAY(String)))  # one array parameter
        if conn.dialect.name == "postgresql"
        else inbox.c.event_id.in_(wanted)
    )
    rows = await conn.execute(select(inbox.c.event_id).where(inbox.c.consumer_group == group, among))
    return {row.event_id for row in rows}


async def record_many(conn: AsyncConnection, group: str, handled: Sequence[tuple[str, str]]) -> None:
    """Inbox rows for (event id, event type) pairs, in one statement."""
    if handled:
        now = datetime.now(UTC)
        await conn.execute(
            insert(inbox),
            [
                {"consumer_group": group, "event_id": i, "event_type": t, "handled_at": now}
                for i, t in handled
            ],
        )


async def record(conn: AsyncConnection, group: str, event_id: str, event_type: str) -> None:
    await conn.execute(
        insert(inbox).values(
            consumer_group=group, event_id=event_id, event_type=event_type, handled_at=datetime.now(UTC)
        )
    )
