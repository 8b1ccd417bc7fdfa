"""The outbox table: events waiting for the relay, and once sent, the event journal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events
from mlcd.store.tables import outbox


@dataclass(frozen=True)
class Pending:
    seq: int
    record: events.Record


def _headers_to_json(headers: events.Headers) -> list[list[str]]:
    return [[k, v.decode("utf-8", "replace")] for k, v in headers]


def _headers_from_json(raw: Any) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(k), str(v).encode()) for k, v in raw)


def _row(envelope: events.Envelope[Any], now: datetime, sent: bool) -> dict[str, Any]:
    record = events.encode(envelope)
    return {
        "topic": record.topic,
        "key": record.key,
        "value": record.value,
        "headers": _headers_to_json(record.headers),
        "event_id": envelope.id,
        "event_type": envelope.type,
        "subject": envelope.subject,
        "event_time": envelope.time,
        "created_at": now,
        "sent_at": now if sent else None,
    }


async def add(
    conn: AsyncConnection, envelopes: Sequence[events.Envelope[Any]], *, sent: bool = False
) -> None:
    """Write events to the outbox (`sent=True`: already acknowledged by the broker, journal only)."""
    now = datetime.now(UTC)
    await conn.execute(insert(outbox), [_row(e, now, sent) for e in envelopes])


async def add_raw(conn: AsyncConnection, record: events.Record) -> None:
    """Queue a raw record (a DLQ replay) for the relay; it keeps its original headers."""
    decoded = events.decode(record)
    is_event = not isinstance(decoded, events.DecodeError)
    await conn.execute(
        insert(outbox).values(
            topic=record.topic,
            key=record.key,
            value=record.value,
            headers=_headers_to_json(record.headers),
            event_id=record.header("ce_id"),
            event_type=record.header("ce_type") if is_event else None,
            subject=record.header("ce_subject"),
            event_time=decoded.time if not isinstance(decoded, events.DecodeError) else None,
            created_at=datetime.now(UTC),
        )
    )


async def contains(conn: AsyncConnection, event_id: str) -> bool:
    found = await conn.scalar(select(outbox.c.seq).where(outbox.c.event_id == event_id).limit(1))
    return found is not None


SLOTS = 16
"""Relay slots on PostgreSQL: every (topic, key) falls in one, so one relay at a time publishes a key."""

_SLOT: ColumnElement[Any] = literal_column(
    f"((hashtextextended(topic || encode(coalesce(key, ''::bytea), 'hex'), 0) % {SLOTS}) + {SLOTS}) % {SLOTS}"
)


async def pending_slots(conn: AsyncConnection) -> set[int]:
    """PostgreSQL: the slots that hold unsent rows."""
    rows = await conn.execute(select(_SLOT.label("slot")).where(outbox.c.sent_at.is_(None)).distinct())
    return {int(r.slot) for r in rows}


async def unsent(conn: AsyncConnection, limit: int, slots: Sequence[int] | None = None) -> list[Pending]:
    """The oldest unsent rows, in order; `slots` (PostgreSQL): only the rows of those slots."""
    query = select(outbox.c.seq, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers).where(
        outbox.c.sent_at.is_(None)
    )
    if slots is not None:
        query = query.where(_SLOT.in_(sorted(slots)))
    rows = await conn.execute(query.order_by(outbox.c.seq).limit(limit))
    return [
        Pending(
            r.seq,
            events.Record(topic=r.topic, key=r.key, value=r.value, headers=_headers_from_json(r.headers)),
        )
        for r in rows
    ]


async def count_unsent(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).where(outbox.c.sent_at.is_(None))) or 0)


def _seq_among(conn: AsyncConnection, seqs: Sequence[int]) -> ColumnElement[bool]:
    if conn.dialect.name == "postgresql":  # one array parameter, not one per row
        return outbox.c.seq == any_(bindparam("seqs", list(seqs), type_=ARRAY(BigInteger)))
    return outbox.c.seq.in_(seqs)


async def mark_sent(conn: AsyncConnection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute(update(outbox).where(_seq_among(conn, seqs)).values(sent_at=datetime.now(UTC)))


async def remove(conn: AsyncConnection, seqs: Sequence[int]) -> None:
    """Drop unsent rows that will never be published (parked as dead letters instead)."""
    if seqs:
        await conn.execute(delete(outbox).where(outbox.c.seq.in_(seqs), outbox.c.sent_at.is_(None)))


async def purge_sent(conn: AsyncConnection, older_than: timedelta) -> int:
    cutoff = datetime.now(UTC) - older_than
    result = await conn.execute(
        delete(outbox).where(and_(outbox.c.sent_at.is_not(None), outbox.c.sent_at < cutoff))
    )
    return int(result.rowcount or 0)


async def journal(
    conn: AsyncConnection,
    *,
    model: str | None = None,
    event_type: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
    ascending: bool = False,
) -> list[tuple[int, dict[str, Any]]]:
    """Sent events as (seq, structured CloudEvent), newest first unless `ascending`."""
    query = select(outbox).where(
        outbox.c.sent_at.is_not(None), outbox.c.event_type.is_not(None), outbox.c.topic != events.DLQ_TOPIC
    )
    if model:
        query = query.where(outbox.c.subject == model)
    if event_type:
        query = query.where(outbox.c.event_type == event_type)
    if after_seq is not None:
        query = query.where(outbox.c.seq > after_seq)
    query = query.order_by(outbox.c.seq.asc() if ascending else outbox.c.seq.desc()).limit(limit)
    return [(row.seq, _structured(row)) for row in await conn.execute(query)]


def _structured(row: Any) -> dict[str, Any]:
    headers = dict(_headers_from_json(row.headers))
    time = row.event_time
    if time is not None and time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    return {
        "specversion": headers.get("ce_specversion", b"1.0").decode(),
        "id": row.event_id,
        "source": headers.get("ce_source", b"").decode(),
        "type": row.event_type,
        "subject": row.subject,
        "time": time.isoformat() if time else None,
        "datacontenttype": events.CONTENT_TYPE,
        "data": json.loads(row.value),
    }
