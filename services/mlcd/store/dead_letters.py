"""Dead letters: records a consumer could not handle, kept for `mlcd dlq list` and `mlcd dlq replay`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events
from mlcd.store import outbox
from mlcd.store.tables import dead_letters


@dataclass(frozen=True)
class DeadLetter:
    id: int
    consumer_group: str
    topic: str
    event_id: str | None
    event_type: str | None
    error: str
    attempts: int
    created_at: datetime
    replayed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "consumer_group": self.consumer_group,
            "topic": self.topic,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
        }


async def park(conn: AsyncConnection, group: str, record: events.Record, error: str, attempts: int) -> None:
    await conn.execute(
        insert(dead_letters).values(
            consumer_group=group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=[[k, v.decode("utf-8", "replace")] for k, v in record.headers],
            event_id=record.header("ce_id"),
            event_type=record.header("ce_type"),
            error=error,
            attempts=attempts,
            created_at=datetime.now(UTC),
        )
    )


async def listing(
    conn: AsyncConnection, *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if not include_replayed:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    return [
        DeadLetter(
            id=r.id,
            consumer_group=r.consumer_group,
            topic=r.topic,
            event_id=r.event_id,
            event_type=r.event_type,
            error=r.error,
            attempts=r.attempts,
            created_at=r.created_at,
            replayed_at=r.replayed_at,
        )
        for r in await conn.execute(query)
    ]


async def replay(conn: AsyncConnection, ids: list[int] | None = None) -> int:
    """Queue parked records back onto their original topics through the outbox; returns how many."""
    query = select(dead_letters).where(dead_letters.c.replayed_at.is_(None)).order_by(dead_letters.c.id)
    if ids:
        query = query.where(dead_letters.c.id.in_(ids))
    rows = list(await conn.execute(query))
    for r in rows:
        await outbox.add_raw(
            conn,
            events.Record(
                topic=r.topic, key=r.key, value=r.value, headers=tuple((k, v.encode()) for k, v in r.headers)
            ),
        )
    if rows:
        await conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id.in_([r.id for r in rows]))
            .values(replayed_at=datetime.now(UTC))
        )
    return len(rows)
