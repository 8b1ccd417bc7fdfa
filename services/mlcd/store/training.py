"""The trainer's state: one row per model (its lock, the coalesced follow-up trigger, the newest data) and
one row per training run (which trigger started it, where it stands, what it produced).

`lock_model` serialises a model's handlers and the run follower on PostgreSQL (row lock); SQLite's
BEGIN IMMEDIATE already serialises writers. No lock is held across an orchestrator call: a run is first
recorded as STARTING (the intent), submitted under its idempotent name, then recorded RUNNING; a follower
takes a run for one look with `claim`, a lease on the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import metadata

STARTING = "STARTING"
"""Intent recorded, run not yet known to the orchestrator (`run_id` empty): the next step submits it."""
RUNNING = "RUNNING"
ACTIVE = (STARTING, RUNNING)

training_models = Table(
    "training_models",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("pending_event_id", String(200), nullable=True),
    Column("pending_data_uri", Text, nullable=True),
    Column("pending_reason", Text, nullable=True),
    Column("pending_commit", String(64), nullable=True),
    Column("pending_author", String(200), nullable=True),
    Column("pending_correlation_id", String(200), nullable=True),
    Column("last_data_uri", Text, nullable=True),
    Column("last_data_etag", Text, nullable=True),
    Column("last_data_version_id", Text, nullable=True),
    Column("pending_data_etag", Text, nullable=True),
    Column("pending_data_version_id", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("run_name", String(200), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("run_id", String(200), nullable=False),
    Column("trigger_event_id", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("data_uri", Text, nullable=False),
    Column("data_etag", Text, nullable=False, server_default=""),
    Column("data_version_id", Text, nullable=False, server_default=""),
    Column("pipeline", String(200), nullable=False),
    Column("pipeline_version", String(200), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("checks", Integer, nullable=False),
    Column("next_check_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("model_version", String(100), nullable=True),
    Column("outcome", Text, nullable=True),
    Column("author", String(200), nullable=False, server_default=""),
    Column("correlation_id", String(200), nullable=False, server_default=""),
    Index("ix_training_runs_model_state", "model", "state"),
    Index("ix_training_runs_state_next_check", "state", "next_check_at"),
)


@dataclass(frozen=True)
class Trigger:
    """Why a model should be trained, on which data: the event that asked for it."""

    model: str
    event_id: str
    data_uri: str
    reason: str
    commit: str = ""
    author: str = ""  # who caused it (pusher, uploader, requester): they may not approve its candidate
    correlation_id: str = ""  # the chain it belongs to; the run's events continue it
    data_etag: str = ""  # the batch as validated: read only while it has this ETag
    data_version_id: str = ""  # or this object version (versioned buckets); both empty: the latest


@dataclass(frozen=True)
class TrainingRun:
    run_name: str
    model: str
    run_id: str
    trigger_event_id: str
    reason: str
    data_uri: str
    pipeline: str
    pipeline_version: str
    commit: str
    state: str
    checks: int
    next_check_at: datetime
    started_at: datetime
    finished_at: datetime | None = None
    model_version: str | None = None
    outcome: str | None = None
    data_etag: str = ""
    data_version_id: str = ""
    author: str = ""
    correlation_id: str = ""


def intended_run(name: str, trigger: Trigger, pipeline: str, lease: timedelta) -> TrainingRun:
    """The row of a run about to be submitted for `trigger`; no follower touches it before `lease` ends."""
    now = datetime.now(UTC)
    return TrainingRun(
        run_name=name,
        model=trigger.model,
        run_id="",
        trigger_event_id=trigger.event_id,
        reason=trigger.reason,
        data_uri=trigger.data_uri,
        pipeline=pipeline,
        pipeline_version="",
        commit=trigger.commit,
        state=STARTING,
        checks=0,
        next_check_at=now + lease,
        started_at=now,
        author=trigger.author,
        correlation_id=trigger.correlation_id,
        data_etag=trigger.data_etag,
        data_version_id=trigger.data_version_id,
    )


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware columns back naive; every time mlcd stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _run(row: Any) -> TrainingRun:
    values = dict(row._mapping)
    for key in ("next_check_at", "started_at", "finished_at"):
        values[key] = _aware(values[key])
    return TrainingRun(**values)


async def lock_model(conn: AsyncConnection, model: str) -> None:
    """Create the model's row if needed and hold its lock until the transaction ends."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(training_models)
        .values(model=model, updated_at=datetime.now(UTC))
        .on_conflict_do_nothing(index_elements=["model"])
    )
    await conn.execute(
        select(training_models.c.model).where(training_models.c.model == model).with_for_update()
    )


async def remember_data(conn: AsyncConnection, trigger: Trigger) -> None:
    """The trigger's batch becomes the model's newest data, pinned as the trigger pinned it."""
    await conn.execute(
        update(training_models)
        .where(training_models.c.model == trigger.model)
        .values(
            last_data_uri=trigger.data_uri,
            last_data_etag=trigger.data_etag,
            last_data_version_id=trigger.data_version_id,
            updated_at=datetime.now(UTC),
        )
    )


@dataclass(frozen=True)
class Batch:
    """A model's newest batch: where it is and, when it was validated, which bytes (ETag, version)."""

    uri: str
    etag: str = ""
    version_id: str = ""


async def last_data(conn: AsyncConnection, model: str) -> Batch | None:
    row = (
        await conn.execute(
            select(
                training_models.c.last_data_uri,
                training_models.c.last_data_etag,
                training_models.c.last_data_version_id,
            ).where(training_models.c.model == model)
        )
    ).first()
    if row is None or not row.last_data_uri:
        return None
    return Batch(row.last_data_uri, row.last_data_etag or "", row.last_data_version_id or "")


async def last_data_uri(conn: AsyncConnection, model: str) -> str | None:
    batch = await last_data(conn, model)
    return batch.uri if batch else None


async def queue(conn: AsyncConnection, trigger: Trigger) -> None:
    """Make `trigger` the model's one follow-up, replacing any older one (newest data wins)."""
    await conn.execute(
        update(training_models)
        .where(training_models.c.model == trigger.model)
        .values(
            pending_event_id=trigger.event_id,
            pending_data_uri=trigger.data_uri,
            pending_reason=trigger.reason,
            pending_commit=trigger.commit,
            pending_author=trigger.author,
            pending_correlation_id=trigger.correlation_id,
            pending_data_etag=trigger.data_etag,
            pending_data_version_id=trigger.data_version_id,
            updated_at=datetime.now(UTC),
        )
    )


async def pending(conn: AsyncConnection, model: str) -> Trigger | None:
    """The model's follow-up trigger, if one waits."""
    row = (await conn.execute(select(training_models).where(training_models.c.model == model))).first()
    if row is None or row.pending_event_id is None:
        return None
    return Trigger(
        model,
        row.pending_event_id,
        row.pending_data_uri,
        row.pending_reason,
        row.pending_commit or "",
        row.pending_author or "",
        row.pending_correlation_id or "",
        data_etag=row.pending_data_etag or "",
        data_version_id=row.pending_data_version_id or "",
    )


async def take_pending(conn: AsyncConnection, model: str) -> Trigger | None:
    """The model's follow-up trigger, removed from the queue; None when nothing waits."""
    trigger = await pending(conn, model)
    if trigger is not None:
        await conn.execute(
            update(training_models)
            .where(training_models.c.model == model)
            .values(
                pending_event_id=None,
                pending_data_uri=None,
                pending_reason=None,
                pending_commit=None,
                pending_author=None,
                pending_correlation_id=None,
                pending_data_etag=None,
                pending_data_version_id=None,
            )
        )
    return trigger


async def active_run(conn: AsyncConnection, model: str) -> TrainingRun | None:
    row = (
        await conn.execute(
            select(training_runs).where(training_runs.c.model == model, training_runs.c.state.in_(ACTIVE))
        )
    ).first()
    return _run(row) if row is not None else None


async def get_run(conn: AsyncConnection, run_name: str) -> TrainingRun | None:
    row = (await conn.execute(select(training_runs).where(training_runs.c.run_name == run_name))).first()
    return _run(row) if row is not None else None


async def runs(conn: AsyncConnection, model: str) -> list[TrainingRun]:
    """The model's runs, oldest first."""
    rows = await conn.execute(
        select(training_runs).where(training_runs.c.model == model).order_by(training_runs.c.started_at)
    )
    return [_run(row) for row in rows]


async def record_intent(conn: AsyncConnection, run: TrainingRun) -> None:
    await conn.execute(insert(training_runs).values(**run.__dict__))


async def drop_intent(conn: AsyncConnection, run_name: str) -> None:
    """Forget a run that was never submitted (its submit failed), so the trigger's retry starts afresh."""
    await conn.execute(
        delete(training_runs).where(training_runs.c.run_name == run_name, training_runs.c.state == STARTING)
    )


async def record_submitted(
    conn: AsyncConnection, run_name: str, run_id: str, pipeline_version: str, next_check_at: datetime
) -> bool:
    """The intended run is known to the orchestrator now; False when it was recorded before."""
    result = await conn.execute(
        update(training_runs)
        .where(training_runs.c.run_name == run_name, training_runs.c.state == STARTING)
        .values(run_id=run_id, pipeline_version=pipeline_version, state=RUNNING, next_check_at=next_check_at)
    )
    return bool(result.rowcount == 1)


async def claim(conn: AsyncConnection, run: TrainingRun, until: datetime) -> bool:
    """Take the run for one look until `until`; False when another follower took it since it was read."""
    result = await conn.execute(
        update(training_runs)
        .where(
            training_runs.c.run_name == run.run_name,
            training_runs.c.checks == run.checks,
            training_runs.c.state.in_(ACTIVE),
        )
        .values(checks=run.checks + 1, next_check_at=until)
    )
    return bool(result.rowcount == 1)


async def due(conn: AsyncConnection, now: datetime, limit: int = 20) -> list[TrainingRun]:
    """Active runs whose next look is due, soonest first."""
    rows = await conn.execute(
        select(training_runs)
        .where(training_runs.c.state.in_(ACTIVE), training_runs.c.next_check_at <= now)
        .order_by(training_runs.c.next_check_at)
        .limit(limit)
    )
    return [_run(row) for row in rows]


async def reschedule(conn: AsyncConnection, run_name: str, checks: int, next_check_at: datetime) -> None:
    await conn.execute(
        update(training_runs)
        .where(training_runs.c.run_name == run_name)
        .values(checks=checks, next_check_at=next_check_at)
    )


async def record_finished(
    conn: AsyncConnection, run_name: str, state: str, outcome: str, model_version: str | None = None
) -> bool:
    """The run ended; False when its end was recorded before (the caller must not report it again)."""
    result = await conn.execute(
        update(training_runs)
        .where(training_runs.c.run_name == run_name, training_runs.c.state.in_(ACTIVE))
        .values(state=state, outcome=outcome, model_version=model_version, finished_at=datetime.now(UTC))
    )
    return bool(result.rowcount == 1)
