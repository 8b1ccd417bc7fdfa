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
    Integer,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events, tracing
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


_ADD_WITH_INBOX = text(
    """
    WITH added AS (
        INSERT INTO outbox (topic, key, value, headers, event_id, event_type, subject, event_time, created_at)
        SELECT r.topic, r.key, r.value, CAST(r.headers AS json), r.event_id, r.event_type, r.subject,
               r.event_time, now()
        FROM unnest(
            CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:payloads AS bytea[]),
            CAST(:headers AS text[]), CAST(:event_ids AS text[]), CAST(:event_types AS text[]),
            CAST(:subjects AS text[]), CAST(:event_times AS timestamptz[])
        ) WITH ORDINALITY AS r(topic, key, value, headers, event_id, event_type, subject, event_time, n)
        ORDER BY r.n
    )
    INSERT INTO inbox (consumer_group, event_id, event_type, handled_at)
    SELECT :group, h.event_id, h.event_type, now()
    FROM unnest(CAST(:handled_ids AS text[]), CAST(:handled_types AS text[])) AS h(event_id, event_type)
    """
)


async def add_with_inbox(
    conn: AsyncConnection,
    envelopes: Sequence[events.Envelope[Any]],
    group: str,
    handled: Sequence[tuple[str, str]],
) -> None:
    """PostgreSQL: events into the outbox (in order) and inbox rows for (event id, event type) pairs, in
    one statement, so one round trip; on a connection in autocommit it is its own transaction."""
    records = [events.encode(e) for e in envelopes]
    await conn.execute(
        _ADD_WITH_INBOX,
        {
            "topics": [r.topic for r in records],
            "keys": [r.key for r in records],
            "payloads": [r.value for r in records],
            "headers": [json.dumps(_headers_to_json(r.headers)) for r in records],
            "event_ids": [e.id for e in envelopes],
            "event_types": [e.type for e in envelopes],
            "subjects": [e.subject for e in envelopes],
            "event_times": [e.time for e in envelopes],
            "group": group,
            "handled_ids": [i for i, _ in handled],
            "handled_types": [t for _, t in handled],
        },
    )


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


_UNSENT = (
    select(outbox.c.seq, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
    .where(outbox.c.sent_at.is_(None))
    .order_by(outbox.c.seq)
    .limit(bindparam("limit"))
)
_UNSENT_IN_SLOTS = (
    select(outbox.c.seq, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
    .where(outbox.c.sent_at.is_(None), any_(bindparam("slots", type_=ARRAY(Integer))) == _SLOT)
    .order_by(outbox.c.seq)
    .limit(bindparam("limit"))
)


async def unsent(conn: AsyncConnection, limit: int, slots: Sequence[int] | None = None) -> list[Pending]:
    """The oldest unsent rows, in order; `slots` (PostgreSQL): only the rows of those slots."""
    if slots is None:
        rows = await conn.execute(_UNSENT, {"limit": limit})
    else:
        rows = await conn.execute(_UNSENT_IN_SLOTS, {"limit": limit, "slots": sorted(slots)})
    return [
        Pending(seq, events.Record(topic=topic, key=key, value=value, headers=_headers_from_json(headers)))
        for seq, topic, key, value, headers in rows
    ]


async def count_unsent(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).where(outbox.c.sent_at.is_(None))) or 0)


_MARK_SENT = {  # one array parameter on PostgreSQL, not one per row; built once
    "postgresql": update(outbox)
    .where(outbox.c.seq == any_(bindparam("seqs", type_=ARRAY(BigInteger))))
    .values(sent_at=bindparam("now")),
    "other": update(outbox)
    .where(outbox.c.seq.in_(bindparam("seqs", expanding=True)))
    .values(sent_at=bindparam("now")),
}


async def mark_sent(conn: AsyncConnection, seqs: Sequence[int]) -> None:
    if seqs:
        statement = _MARK_SENT.get(conn.dialect.name, _MARK_SENT["other"])
        await conn.execute(statement, {"seqs": list(seqs), "now": datetime.now(UTC)})


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
        **_extensions(headers, row.event_id),
        "datacontenttype": events.CONTENT_TYPE,
        "data": json.loads(row.value),
    }


def _extensions(headers: dict[str, bytes], event_id: str) -> dict[str, str]:
    """The CloudEvents extension attributes; an event journaled before they existed began its own chain."""
    correlation = headers.get("ce_correlationid", b"").decode() or event_id
    traceparent = headers.get("ce_traceparent", b"").decode() or tracing.traceparent(correlation, event_id)
    return {"correlationid": correlation, "traceparent": traceparent}
