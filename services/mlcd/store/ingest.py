"""Ingest's questions to the outbox: is an earlier event for the same key still waiting to be relayed?"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import outbox


async def waiting_for(conn: AsyncConnection, keys: Iterable[tuple[str, bytes | None]]) -> bool:
    """True when an unsent outbox row shares a (topic, key) with `keys`: publishing now would overtake it."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return False
    same_key = or_(*(and_(outbox.c.topic == topic, outbox.c.key == key) for topic, key in wanted))
    found = await conn.scalar(select(outbox.c.seq).where(outbox.c.sent_at.is_(None), same_key).limit(1))
    return found is not None
