"""Ingest's question to the outbox, in one round trip: which of these events are already there, and is an
earlier event for one of their keys still waiting to be relayed?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, literal, null, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import outbox


async def known_and_waiting(
    conn: AsyncConnection, event_ids: Sequence[str], keys: Iterable[tuple[str, bytes | None]]
) -> tuple[set[str], bool]:
    """(ids already in the outbox, whether an unsent row shares a (topic, key) with `keys`)."""
    wanted = list(dict.fromkeys(keys))
    known = select(outbox.c.event_id.label("event_id"), literal(False).label("waiting")).where(
        outbox.c.event_id.in_(event_ids)
    )
    if not wanted:
        rows = await conn.execute(known)
        return {r.event_id for r in rows}, False
    same_key = or_(*(and_(outbox.c.topic == topic, outbox.c.key == key) for topic, key in wanted))
    waiting = (
        select(null().label("event_id"), literal(True).label("waiting"))
        .where(outbox.c.sent_at.is_(None), same_key)
        .limit(1)
        .subquery()
    )
    found = list(await conn.execute(union_all(known, select(waiting.c.event_id, waiting.c.waiting))))
    return {r.event_id for r in found if not r.waiting}, any(r.waiting for r in found)
