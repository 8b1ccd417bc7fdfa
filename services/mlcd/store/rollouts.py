"""Rollout state, step by step: the deployer resumes from the last completed step after a restart.

One running rollout per model (a partial unique index enforces it); an approval that arrives meanwhile
waits in `rollout_waiting` until the running rollout's analysis is due, then supersedes it. A rollout's
`phase` says what its next tick waits for: the step's analysis ("step"), KServe reporting the final
promotion ("promoting"), or the end of the post-promotion guard window ("guarding"). A paused rollout
("paused": inconclusive past its deadline, or on-call asked) waits for `mlcd rollout …`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.errors import Conflict
from mlcd.store.tables import metadata

RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
ROLLED_BACK = "rolled_back"
SUPERSEDED = "superseded"
FAILED = "failed"  # refused before any traffic moved (a model version KServe cannot read)
ACTIVE = (RUNNING, PAUSED)

STEP, PROMOTING, GUARDING = "step", "promoting", "guarding"
REQUESTS = ("promote", "abort", "resume")

_BigId = BigInteger().with_variant(Integer(), "sqlite")

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("artifact_uri", Text, nullable=False),
    Column("previous_version", String(100), nullable=True),
    Column("previous_artifact_uri", Text, nullable=True),
    Column("steps", JSON, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("next_analysis_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=False, default=""),
    Column("figures", JSON, nullable=False, default=dict),
    Column("cause_event_id", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("phase", String(20), nullable=False, server_default=STEP),
    Column("step_started_at", DateTime(timezone=True), nullable=True),
    Column("requested", String(20), nullable=False, server_default=""),
    Column("guard_until", DateTime(timezone=True), nullable=True),
    Column("correlation_id", String(200), nullable=False, server_default=""),
    Index("ix_rollouts_model_id", "model", "id"),
    Index(
        "ux_rollouts_one_running_per_model",
        "model",
        unique=True,
        postgresql_where=text(f"state = '{RUNNING}'"),
        sqlite_where=text(f"state = '{RUNNING}'"),
    ),
)

rollout_measurements = Table(
    "rollout_measurements",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("rollout_id", _BigId, nullable=False),
    Column("phase", String(20), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("traffic_percent", Integer, nullable=False),
    Column("check_name", String(200), nullable=False),
    Column("value", Float, nullable=True),
    Column("min_value", Float, nullable=True),
    Column("max_value", Float, nullable=True),
    Column("passed", Boolean, nullable=True),
    Column("reason", Text, nullable=False),
    Column("measured_at", DateTime(timezone=True), nullable=False),
    Index("ix_rollout_measurements_rollout", "rollout_id", "id"),
)

rollout_waiting = Table(
    "rollout_waiting",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(100), nullable=False),
    Column("cause_event_id", String(200), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("correlation_id", String(200), nullable=False, server_default=""),
)


@dataclass(frozen=True)
class Rollout:
    id: int
    model: str
    version: str
    artifact_uri: str
    previous_version: str | None
    previous_artifact_uri: str | None
    steps: list[int]
    step_index: int
    state: str
    next_analysis_at: datetime | None
    reason: str
    figures: dict[str, float]
    created_at: datetime
    updated_at: datetime
    phase: str = STEP
    step_started_at: datetime | None = None
    requested: str = ""
    guard_until: datetime | None = None
    correlation_id: str = ""  # the chain that started it; its steps' events continue that chain

    @property
    def traffic_percent(self) -> int:
        """Traffic the new version has now (the step last applied)."""
        return self.steps[self.step_index]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "previous_version": self.previous_version,
            "steps": self.steps,
            "step": self.step_index + 1,
            "traffic_percent": self.traffic_percent,
            "state": self.state,
            "next_analysis_at": _iso(self.next_analysis_at),
            "reason": self.reason,
            "figures": self.figures,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "phase": self.phase,
            "step_started_at": _iso(self.step_started_at),
            "requested": self.requested or None,
            "guard_until": _iso(self.guard_until),
        }


@dataclass(frozen=True)
class Measurement:
    """One analysis check's value at one step (or in the guard window), beside the bounds it was held to.

    `value` None is no data; `passed` None is inconclusive, never a pass.
    """

    check: str
    value: float | None
    passed: bool | None
    min: float | None = None
    max: float | None = None
    reason: str = ""
    phase: str = STEP
    step_index: int = 0
    traffic_percent: int = 0
    measured_at: datetime | None = None
    rollout_id: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "check": self.check,
            "value": self.value,
            "passed": self.passed,
            "min": self.min,
            "max": self.max,
            "reason": self.reason,
            "phase": self.phase,
            "step": self.step_index + 1,
            "traffic_percent": self.traffic_percent,
            "measured_at": _iso(self.measured_at),
        }


@dataclass(frozen=True)
class Waiting:
    model: str
    version: str
    cause_event_id: str
    received_at: datetime
    correlation_id: str = ""


def _iso(moment: datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment is not None else None


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rollout(row: Any) -> Rollout:
    return Rollout(
        id=row.id,
        model=row.model,
        version=row.version,
        artifact_uri=row.artifact_uri,
        previous_version=row.previous_version,
        previous_artifact_uri=row.previous_artifact_uri,
        steps=[int(s) for s in row.steps],
        step_index=row.step_index,
        state=row.state,
        next_analysis_at=_aware(row.next_analysis_at) if row.next_analysis_at is not None else None,
        reason=row.reason or "",
        figures={k: float(v) for k, v in (row.figures or {}).items()},
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        phase=row.phase or STEP,
        step_started_at=_aware(row.step_started_at) if row.step_started_at is not None else None,
        requested=row.requested or "",
        guard_until=_aware(row.guard_until) if row.guard_until is not None else None,
        correlation_id=row.correlation_id or "",
    )


async def start(
    conn: AsyncConnection,
    *,
    model: str,
    version: str,
    artifact_uri: str,
    previous_version: str | None,
    previous_artifact_uri: str | None,
    steps: list[int],
    next_analysis_at: datetime | None,
    cause_event_id: str,
    correlation_id: str,
    state: str = RUNNING,
    phase: str = STEP,
    reason: str = "",
) -> Rollout:
    """Record a rollout whose first step is applied."""
    now = datetime.now(UTC)
    result = await conn.execute(
        insert(rollouts)
        .values(
            model=model,
            version=version,
            artifact_uri=artifact_uri,
            previous_version=previous_version,
            previous_artifact_uri=previous_artifact_uri,
            steps=steps,
            step_index=0,
            state=state,
            next_analysis_at=next_analysis_at,
            reason=reason,
            figures={},
            cause_event_id=cause_event_id,
            correlation_id=correlation_id,
            created_at=now,
            updated_at=now,
            phase=phase,
            step_started_at=now,
            requested="",
        )
        .returning(rollouts)
    )
    return _rollout(result.one())


async def running(conn: AsyncConnection, model: str) -> Rollout | None:
    """The model's rollout in progress, running or paused."""
    row = (
        await conn.execute(
            select(rollouts)
            .where(rollouts.c.model == model, rollouts.c.state.in_(ACTIVE))
            .order_by(rollouts.c.id.desc())
            .limit(1)
        )
    ).first()
    return _rollout(row) if row is not None else None


async def latest(conn: AsyncConnection, model: str) -> Rollout | None:
    query = select(rollouts).where(rollouts.c.model == model).order_by(rollouts.c.id.desc()).limit(1)
    row = (await conn.execute(query)).first()
    return _rollout(row) if row is not None else None


async def last_succeeded(conn: AsyncConnection, model: str) -> Rollout | None:
    """The rollout that made the current champion; its `previous_version` is the one before."""
    query = (
        select(rollouts)
        .where(rollouts.c.model == model, rollouts.c.state == SUCCEEDED)
        .order_by(rollouts.c.id.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return _rollout(row) if row is not None else None


async def due(conn: AsyncConnection, now: datetime, limit: int = 50) -> list[Rollout]:
    """Running rollouts whose analysis is due; `claim` one before acting on it."""
    query = (
        select(rollouts)
        .where(rollouts.c.state == RUNNING, rollouts.c.next_analysis_at <= now)
        .order_by(rollouts.c.next_analysis_at)
        .limit(limit)
    )
    return [_rollout(row) for row in await conn.execute(query)]


async def claim(conn: AsyncConnection, rollout: Rollout, now: datetime, until: datetime) -> bool:
    """Take a due rollout for one analysis until `until`; False when another replica took it first."""
    result = await conn.execute(
        update(rollouts)
        .where(
            rollouts.c.id == rollout.id,
            rollouts.c.state == RUNNING,
            rollouts.c.step_index == rollout.step_index,
            rollouts.c.next_analysis_at <= now,
        )
        .values(next_analysis_at=until)
    )
    return bool(result.rowcount == 1)


async def advance(
    conn: AsyncConnection, rollout: Rollout, next_analysis_at: datetime, figures: dict[str, float]
) -> None:
    """Move to the next step; Conflict if another replica moved this rollout first."""
    await _change(
        conn,
        rollout,
        step_index=rollout.step_index + 1,
        next_analysis_at=next_analysis_at,
        figures=figures,
        step_started_at=datetime.now(UTC),
        reason="",
        requested="",
    )


async def enter(
    conn: AsyncConnection,
    rollout: Rollout,
    phase: str,
    next_analysis_at: datetime,
    *,
    step_index: int | None = None,
    guard_until: datetime | None = None,
    figures: dict[str, float] | None = None,
) -> None:
    """Start waiting for something else: KServe's report of the promotion, or the guard window."""
    await _change(
        conn,
        rollout,
        phase=phase,
        next_analysis_at=next_analysis_at,
        step_index=rollout.step_index if step_index is None else step_index,
        step_started_at=datetime.now(UTC),
        guard_until=guard_until,
        figures=figures if figures is not None else rollout.figures,
        requested="",
    )


async def pause(conn: AsyncConnection, rollout: Rollout, reason: str) -> None:
    await _change(conn, rollout, state=PAUSED, next_analysis_at=None, reason=reason, requested="")


async def request(conn: AsyncConnection, rollout: Rollout, what: str, now: datetime) -> None:
    """On-call's request (promote, abort, resume), acted on by the deployer's next tick.

    A paused rollout runs again for it; `resume` also starts the step's deadline afresh.
    """
    values: dict[str, Any] = {"requested": what, "state": RUNNING, "next_analysis_at": now}
    if what == "resume":
        values |= {"requested": "", "step_started_at": now, "reason": ""}
    await _change(conn, rollout, **values)


async def postpone(conn: AsyncConnection, rollout: Rollout, next_analysis_at: datetime, reason: str) -> None:
    await _change(conn, rollout, next_analysis_at=next_analysis_at, reason=reason)


async def finish(
    conn: AsyncConnection,
    rollout: Rollout,
    state: str,
    *,
    reason: str = "",
    figures: dict[str, float] | None = None,
    step_index: int | None = None,
) -> None:
    await _change(
        conn,
        rollout,
        state=state,
        next_analysis_at=None,
        reason=reason,
        figures=figures if figures is not None else rollout.figures,
        step_index=rollout.step_index if step_index is None else step_index,
    )


async def _change(conn: AsyncConnection, rollout: Rollout, **values: Any) -> None:
    # The guard on step and state makes a second writer (another replica, a replayed tick) fail loudly
    # instead of doing a step twice.
    result = await conn.execute(
        update(rollouts)
        .where(
            rollouts.c.id == rollout.id,
            rollouts.c.state == rollout.state,
            rollouts.c.step_index == rollout.step_index,
        )
        .values(updated_at=datetime.now(UTC), **values)
    )
    if result.rowcount != 1:
        raise Conflict(f"rollout {rollout.id} of {rollout.model} changed under us; it will be re-read")


async def measured(conn: AsyncConnection, rollout: Rollout, taken: list[Measurement]) -> None:
    """Keep one analysis's measurements of `rollout` at its current step and phase (write it in the
    transaction that records what the analysis decided, so a decision never lacks its evidence)."""
    if not taken:
        return
    now = datetime.now(UTC)
    await conn.execute(
        insert(rollout_measurements),
        [
            {
                "rollout_id": rollout.id,
                "phase": GUARDING if rollout.phase == GUARDING else STEP,
                "step_index": rollout.step_index,
                "traffic_percent": rollout.traffic_percent,
                "check_name": m.check[:200],
                "value": m.value,
                "min_value": m.min,
                "max_value": m.max,
                "passed": m.passed,
                "reason": m.reason,
                "measured_at": now,
            }
            for m in taken
        ],
    )


async def measurements(conn: AsyncConnection, rollout_ids: list[int]) -> list[Measurement]:
    """The measurements of these rollouts, oldest first."""
    if not rollout_ids:
        return []
    query = (
        select(rollout_measurements)
        .where(rollout_measurements.c.rollout_id.in_(rollout_ids))
        .order_by(rollout_measurements.c.id)
    )
    return [
        Measurement(
            check=row.check_name,
            value=row.value,
            passed=row.passed,
            min=row.min_value,
            max=row.max_value,
            reason=row.reason or "",
            phase=row.phase,
            step_index=row.step_index,
            traffic_percent=row.traffic_percent,
            measured_at=_aware(row.measured_at),
            rollout_id=row.rollout_id,
        )
        for row in await conn.execute(query)
    ]


async def measured_so_far(conn: AsyncConnection, rollout_ids: list[int]) -> dict[int, tuple[int, datetime]]:
    """How many measurements each of these rollouts recorded, and when the last one was taken."""
    if not rollout_ids:
        return {}
    query = (
        select(
            rollout_measurements.c.rollout_id,
            func.count(rollout_measurements.c.id),
            func.max(rollout_measurements.c.measured_at),
        )
        .where(rollout_measurements.c.rollout_id.in_(rollout_ids))
        .group_by(rollout_measurements.c.rollout_id)
    )
    return {int(row[0]): (int(row[1]), _aware(row[2])) for row in await conn.execute(query)}


async def history(conn: AsyncConnection, model: str, limit: int = 10) -> list[Rollout]:
    query = select(rollouts).where(rollouts.c.model == model).order_by(rollouts.c.id.desc()).limit(limit)
    return [_rollout(row) for row in await conn.execute(query)]


async def models(conn: AsyncConnection) -> list[str]:
    return [
        row[0] for row in await conn.execute(select(rollouts.c.model).distinct().order_by(rollouts.c.model))
    ]


async def wait(
    conn: AsyncConnection, model: str, version: str, cause_event_id: str, correlation_id: str
) -> None:
    """Queue an approval behind the running rollout; a later approval replaces an earlier one."""
    await conn.execute(delete(rollout_waiting).where(rollout_waiting.c.model == model))
    await conn.execute(
        insert(rollout_waiting).values(
            model=model,
            version=version,
            cause_event_id=cause_event_id,
            received_at=datetime.now(UTC),
            correlation_id=correlation_id,
        )
    )


def _waiting(row: Any) -> Waiting:
    return Waiting(
        row.model, row.version, row.cause_event_id, _aware(row.received_at), row.correlation_id or ""
    )


async def waiting(conn: AsyncConnection, model: str) -> Waiting | None:
    row = (await conn.execute(select(rollout_waiting).where(rollout_waiting.c.model == model))).first()
    if row is None:
        return None
    return _waiting(row)


async def all_waiting(conn: AsyncConnection) -> list[Waiting]:
    rows = await conn.execute(select(rollout_waiting).order_by(rollout_waiting.c.received_at))
    return [_waiting(r) for r in rows]


async def take_waiting(conn: AsyncConnection, model: str) -> Waiting | None:
    found = await waiting(conn, model)
    if found is not None:
        await conn.execute(delete(rollout_waiting).where(rollout_waiting.c.model == model))
    return found
