"""The lineage exporter: the chain's events written to the lineage stores the platform looks at, as
OpenLineage run events and as ML Metadata artifacts, executions and contexts.

An adapter mlcd can live without: it emits nothing and no other service waits on it. Each event is read
with the journal's record of the event that began its run, turned into steps (`steps.of_event`) and
handed to every configured store; both write a redelivered step as the same thing (run ids and MLMD
names derive from event ids), so a retry after one store failed repeats nothing the other keeps twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events, logs, ports
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.errors import ConfigError, TemporaryError
from mlcd.lineage_export import steps
from mlcd.store import outbox
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)

NAME = "lineage-export"
LOOKBACK = 2_000
"""Journal rows of one model and type searched for the event that began a run."""


async def on_chain_event(
    event: events.Envelope[Any], uow: UnitOfWork, *, lineage: Sequence[ports.LineageExport]
) -> None:
    if not lineage:
        return
    model = str(getattr(event.data, "model", None) or event.subject or "")
    found: dict[str, steps.Event | None] = {}
    if steps.lookups(event):
        async with uow.transaction() as tx:
            for name, lookup in steps.lookups(event).items():
                found[name] = await _find(tx.connection, event, model, lookup)
            for name, lookup in steps.follow_ups(event, found).items():
                found[name] = await _find(tx.connection, event, model, lookup)
    try:
        made = steps.of_event(event, found)
    except steps.Unlinked as e:  # published, not journaled yet: the relay marks it sent in a moment
        raise TemporaryError(str(e)) from e
    for store in lineage:
        await store.export(made)
    log.info("lineage exported", type=event.type, steps=len(made), stores=[s.name for s in lineage])


async def _find(
    conn: AsyncConnection, event: events.Envelope[Any], model: str, lookup: steps.Lookup
) -> steps.Event | None:
    where = None if lookup.any_model else model
    rows = await outbox.journal(conn, model=where, event_type=lookup.kind.type, limit=LOOKBACK)
    bound = min(event.time, lookup.no_later_than or event.time)
    for _, journaled in rows:  # newest first
        if journaled["id"] == event.id or not _no_later(journaled, bound):
            continue
        if all(journaled["data"].get(k) == v for k, v in lookup.fields.items()):
            return journaled
    return None


def _no_later(journaled: steps.Event, time: datetime) -> bool:
    return journaled["time"] is None or datetime.fromisoformat(str(journaled["time"])) <= time


def configured(settings: Settings) -> bool:
    """The exporter has somewhere to write: an OpenLineage endpoint or an MLMD store."""
    return bool(settings.openlineage_url or settings.mlmd_store)


def check_can_start(settings: Settings) -> None:
    """A ConfigError, before anything starts, when the exporter could write nowhere."""
    if not configured(settings):
        raise ConfigError(f"{NAME} has nowhere to write: set MLCD_OPENLINEAGE_URL or MLCD_MLMD_STORE")
    if settings.mlmd_store and not settings.mlmd_python.exists():
        raise ConfigError(
            f"MLCD_MLMD_PYTHON {settings.mlmd_python} does not exist: create it with `make mlmd-venv` "
            "(a virtualenv with ml-metadata==1.17.1)"
        )


SERVICE = ServiceSpec(NAME, {payload: [on_chain_event] for payload in steps.EXPORTED})
