"""What the validator said about one data batch, read back from the event journal.

The validator keeps no table of its own: its verdict on a batch is the DataValidated or DataRejected event
it emitted, which the outbox keeps (sent or not) for `event_retention_days`.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events
from mlcd.store.tables import outbox

SCAN_LIMIT = 1000
"""The newest verdicts of a model looked through for a batch; an older verdict is treated as not found."""

_PAGE = 100
_VERDICTS: dict[str, type[events.DataValidated] | type[events.DataRejected]] = {
    events.DataValidated.type: events.DataValidated,
    events.DataRejected.type: events.DataRejected,
}


async def batch_verdict(
    conn: AsyncConnection, model: str, uri: str
) -> events.DataValidated | events.DataRejected | None:
    """The newest validation verdict on batch `uri` of `model`, or None when the journal holds none."""
    if not uri:
        return None
    before: int | None = None
    for _ in range(SCAN_LIMIT // _PAGE):
        query = (
            select(outbox.c.seq, outbox.c.event_type, outbox.c.value)
            .where(
                outbox.c.subject == model,
                outbox.c.event_type.in_(list(_VERDICTS)),
                outbox.c.topic != events.DLQ_TOPIC,
            )
            .order_by(outbox.c.seq.desc())
            .limit(_PAGE)
        )
        if before is not None:
            query = query.where(outbox.c.seq < before)
        rows = (await conn.execute(query)).all()
        for row in rows:
            verdict = _verdict(row.event_type, row.value)
            if verdict is not None and verdict.uri == uri:
                return verdict
        if len(rows) < _PAGE:
            return None
        before = rows[-1].seq
    return None


def _verdict(event_type: str, value: bytes) -> events.DataValidated | events.DataRejected | None:
    try:
        return _VERDICTS[event_type].model_validate(json.loads(value))
    except ValueError:  # pydantic's ValidationError is one too
        return None  # a row an older mlcd wrote in another shape is not this batch's verdict
