"""Ingest's question to the outbox, in one round trip: which of these events are already there, and is an
earlier event for one of their keys still waiting to be relayed?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, literal, null, or_, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import outbox

_KNOWN_AND_WAITING = text(  # PostgreSQL: built once, array parameters (the same statement each delivery)
    """
    SELECT event_id, false AS waiting FROM outbox WHERE event_id = ANY(CAST(:ids AS text[]))
    UNION ALL
    (SELECT NULL, true FROM outbox AS o
     WHERE o.sent_at IS NULL AND EXISTS (
         SELECT 1 FROM unnest(CAST(:topics AS text[]), CAST(:keys AS bytea[])) AS w(topic, key)
         WHERE w.topic = o.topic AND w.key IS NOT DISTINCT FROM o.key)
     LIMIT 1)
    """
)


async def known_and_waiting(
    conn: AsyncConnection, event_ids: Sequence[str], keys: Iterable[tuple[str, bytes | None]]
) -> tuple[set[str], bool]:
    """(ids already in the outbox, whether an unsent row shares a (topic, key) with `keys`)."""
    wanted = list(dict.fromkeys(keys))
    if conn.dialect.name == "postgresql":
        rows = await conn.execute(
            _KNOWN_AND_WAITING,
            {"ids": list(event_ids), "topics": [t for t, _ in wanted], "keys": [k for _, k in wanted]},
        )
        return _split(list(rows))
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
    return _split(list(await conn.execute(union_all(known, select(waiting.c.event_id, waiting.c.waiting)))))


def _split(found: Sequence[Any]) -> tuple[set[str], bool]:
    return {r.event_id for r in found if not r.waiting}, any(r.waiting for r in found)
