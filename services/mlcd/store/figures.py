"""Per-model figures for the on-call's dashboard, read in one go from the gates, rollouts and training tables
and the event journal. Read only; every figure is what the shared store says now."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events
from mlcd.store import rollouts, training
from mlcd.store.gates import gates
from mlcd.store.tables import outbox

GATE_STATES = ("open", "approved", "rejected", "expired", "superseded")
ROLLOUT_OUTCOMES = ("running", "paused", "succeeded", "rolled_back", "aborted", "superseded", "failed")
TRAINING_STATES = ("starting", "running", "succeeded", "failed")
ARRIVALS_SCANNED = 50
"""DataArrived events looked through (newest first, before the run started) for the champion's batch."""


@dataclass
class ModelFigures:
    gates: dict[str, int] = field(default_factory=dict)
    oldest_open_gate_at: datetime | None = None
    rollouts: dict[str, int] = field(default_factory=dict)
    training_runs: dict[str, int] = field(default_factory=dict)
    last_training_s: float | None = None
    data_to_champion_s: float | None = None

    @property
    def change_failure_ratio(self) -> float | None:
        """Rollouts that sent traffic back (rolled back, aborted) over those that finished moving traffic."""
        failed = self.rollouts.get("rolled_back", 0) + self.rollouts.get("aborted", 0)
        finished = failed + self.rollouts.get("succeeded", 0)
        return failed / finished if finished else None


async def read(conn: AsyncConnection) -> dict[str, ModelFigures]:
    """Every model the store knows of (one with a gate, a rollout or a training run) and its figures."""
    found: defaultdict[str, ModelFigures] = defaultdict(ModelFigures)
    await _gates(conn, found)
    await _rollouts(conn, found)
    await _training(conn, found)
    await _data_to_champion(conn, found)
    return dict(found)


async def _gates(conn: AsyncConnection, found: defaultdict[str, ModelFigures]) -> None:
    query = select(gates.c.model, gates.c.state, func.count(), func.min(gates.c.created_at)).group_by(
        gates.c.model, gates.c.state
    )
    for model, state, count, oldest in await conn.execute(query):
        figures = found[model]
        figures.gates[state] = int(count)
        if state == "open":
            figures.oldest_open_gate_at = _aware(oldest)


async def _rollouts(conn: AsyncConnection, found: defaultdict[str, ModelFigures]) -> None:
    table = rollouts.rollouts
    query = select(table.c.model, table.c.state, table.c.requested, func.count()).group_by(
        table.c.model, table.c.state, table.c.requested
    )
    for model, state, requested, count in await conn.execute(query):
        # An on-call abort ends rolled back with the request still recorded on the row.
        outcome = "aborted" if state == rollouts.ROLLED_BACK and requested == "abort" else state
        counts = found[model].rollouts
        counts[outcome] = counts.get(outcome, 0) + int(count)


async def _training(conn: AsyncConnection, found: defaultdict[str, ModelFigures]) -> None:
    runs = training.training_runs
    query = select(runs.c.model, runs.c.state, func.count()).group_by(runs.c.model, runs.c.state)
    for model, state, count in await conn.execute(query):
        found[model].training_runs[str(state).lower()] = int(count)
    newest = (
        select(runs.c.model, func.max(runs.c.finished_at).label("finished_at"))
        .where(runs.c.finished_at.is_not(None))
        .group_by(runs.c.model)
        .subquery()
    )
    last = select(runs.c.model, runs.c.started_at, runs.c.finished_at).join(
        newest, and_(runs.c.model == newest.c.model, runs.c.finished_at == newest.c.finished_at)
    )
    for model, started, finished in await conn.execute(last):
        found[model].last_training_s = (_aware(finished) - _aware(started)).total_seconds()


async def _data_to_champion(conn: AsyncConnection, found: defaultdict[str, ModelFigures]) -> None:
    """From the arrival of the batch the newest champion was trained on to its rollout's success."""
    table, runs = rollouts.rollouts, training.training_runs
    newest = (
        select(func.max(table.c.id).label("id"))
        .where(table.c.state == rollouts.SUCCEEDED)
        .group_by(table.c.model)
        .subquery()
    )
    champions = select(table.c.model, table.c.version, table.c.updated_at).join(
        newest, table.c.id == newest.c.id
    )
    for model, version, succeeded_at in (await conn.execute(champions)).all():
        run = (
            await conn.execute(
                select(runs.c.data_uri, runs.c.started_at)
                .where(runs.c.model == model, runs.c.model_version == version, runs.c.state == "SUCCEEDED")
                .order_by(runs.c.started_at.desc())
                .limit(1)
            )
        ).first()
        if run is None or not run.data_uri:
            continue  # registered outside mlcd, or trained without a batch
        arrived = await _arrival(conn, model, run.data_uri, _aware(run.started_at))
        if arrived is not None:
            found[model].data_to_champion_s = (_aware(succeeded_at) - arrived).total_seconds()


async def _arrival(conn: AsyncConnection, model: str, uri: str, not_after: datetime) -> datetime | None:
    rows = await conn.execute(
        select(outbox.c.value, outbox.c.event_time)
        .where(
            outbox.c.subject == model,
            outbox.c.event_type == events.DataArrived.type,
            outbox.c.event_time <= not_after,
        )
        .order_by(outbox.c.seq.desc())
        .limit(ARRIVALS_SCANNED)
    )
    for value, event_time in rows:
        try:
            if json.loads(value).get("uri") == uri:
                return _aware(event_time)
        except (ValueError, AttributeError):
            continue
    return None


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything mlcd stores is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
