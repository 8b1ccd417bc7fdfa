"""Notices the notifier recorded, one row per event and channel: written before the message is sent,
marked sent (or failed) after, so a redelivered event sends only what was not sent yet."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table, Text, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import metadata

PENDING, SENT, FAILED = "pending", "sent", "failed"

notices = Table(
    "notices",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("event_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("channel", String(80), nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("message", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_notices_model_created", "model", "created_at"),
    Index("ix_notices_event", "event_id"),
)


@dataclass(frozen=True)
class Notice:
    id: str
    event_id: str
    model: str
    kind: str
    channel: str
    state: str
    attempts: int
    error: str
    message: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None


def notice_id(event_id: str, channel: str) -> str:
    """The notice's key: the same for one event and channel on every delivery of that event."""
    return hashlib.sha256(f"{event_id}\n{channel}".encode()).hexdigest()[:40]


async def record(
    conn: AsyncConnection,
    *,
    event_id: str,
    model: str,
    kind: str,
    channels: list[str],
    message: dict[str, Any],
) -> list[Notice]:
    """Record a pending notice per channel unless already recorded; every one of the event's notices."""
    known = {n.channel for n in await of_event(conn, event_id)}
    now = datetime.now(UTC)
    for channel in channels:
        if channel in known:
            continue
        await conn.execute(
            insert(notices).values(
                id=notice_id(event_id, channel),
                event_id=event_id,
                model=model,
                kind=kind,
                channel=channel,
                state=PENDING,
                attempts=0,
                error="",
                message=message,
                created_at=now,
            )
        )
    return await of_event(conn, event_id)


async def of_event(conn: AsyncConnection, event_id: str) -> list[Notice]:
    rows = await conn.execute(
        select(notices).where(notices.c.event_id == event_id).order_by(notices.c.channel)
    )
    return [_notice(row) for row in rows]


async def finish(conn: AsyncConnection, id: str, state: str, error: str = "") -> None:
    """Mark one notice sent or failed (`error` says why), or count a failed attempt while it stays pending."""
    values: dict[str, Any] = {"state": state, "error": error[:2000], "attempts": notices.c.attempts + 1}
    if state == SENT:
        values["sent_at"] = datetime.now(UTC)
    await conn.execute(update(notices).where(notices.c.id == id).values(**values))


async def listing(conn: AsyncConnection, *, model: str | None = None, limit: int = 100) -> list[Notice]:
    query = select(notices).order_by(notices.c.created_at.desc(), notices.c.id).limit(limit)
    if model:
        query = query.where(notices.c.model == model)
    return [_notice(row) for row in await conn.execute(query)]


def _notice(row: Any) -> Notice:
    return Notice(
        id=row.id,
        event_id=row.event_id,
        model=row.model,
        kind=row.kind,
        channel=row.channel,
        state=row.state,
        attempts=row.attempts,
        error=row.error,
        message=dict(row.message),
        created_at=_aware(row.created_at),
        sent_at=_aware(row.sent_at) if row.sent_at else None,
    )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)
