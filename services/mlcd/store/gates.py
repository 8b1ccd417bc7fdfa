"""Promotion gates, their append-only audit log, approvals, and the monitoring debounce table.

The first decision wins under concurrency: `lock` takes the gate's row lock on PostgreSQL (SQLite's
BEGIN IMMEDIATE already serialises writers) and `finish` only moves a gate that is still open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd.store.tables import metadata

_BigId = BigInteger().with_variant(Integer(), "sqlite")

gates = Table(
    "gates",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("model_version", String(100), nullable=False),
    Column("champion_version", String(100), nullable=True),
    Column("state", String(16), nullable=False),
    Column("rules", JSON, nullable=False),
    Column("approvals_required", Integer, nullable=False),
    Column("approver_groups", JSON, nullable=False),
    Column("author", String(200), nullable=False),
    Column("project", String(300), nullable=False),
    Column("commit", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("reason", Text, nullable=False),
    Column("cause_event_id", String(200), nullable=False, unique=True),
    Column("merge_request_iid", Integer, nullable=True),
    Column("merge_request_url", Text, nullable=False, server_default=""),
    Column("correlation_id", String(200), nullable=False, server_default=""),
    Index("ix_gates_state_model", "state", "model"),
)

gate_audit = Table(
    "gate_audit",
    metadata,
    Column("seq", _BigId, primary_key=True, autoincrement=True),
    Column("gate_id", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("via", String(16), nullable=False),
    Column("action", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_gate_audit_gate", "gate_id", "seq"),
)

gate_approvals = Table(
    "gate_approvals",
    metadata,
    Column("gate_id", String(16), primary_key=True),
    Column("actor", String(200), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

monitoring_debounce = Table(
    "monitoring_debounce",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("action", String(16), primary_key=True),
    Column("last_at", DateTime(timezone=True), nullable=False),
)

# No 0/o, 1/l/i: an id someone reads off a Slack message and types into a comment.
_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
ID_LENGTH = 6


@dataclass(frozen=True)
class Gate:
    id: str
    model: str
    model_version: str
    champion_version: str | None
    state: str
    rules: list[dict[str, Any]]
    approvals_required: int
    approver_groups: list[str]
    author: str
    project: str
    commit: str
    created_at: datetime
    expires_at: datetime
    cause_event_id: str
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    approvals: list[str] = field(default_factory=list)
    # The merge request that changed the model's pipeline (in `project`), found from `commit`.
    merge_request_iid: int | None = None
    merge_request_url: str = ""
    correlation_id: str = ""  # the chain that opened it; decisions on it continue that chain

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "model_version": self.model_version,
            "champion_version": self.champion_version,
            "state": self.state,
            "approvals_required": self.approvals_required,
            "approvals": self.approvals,
            "approver_groups": self.approver_groups,
            "author": self.author,
            "merge_request_url": self.merge_request_url or None,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class AuditEntry:
    gate_id: str
    at: datetime
    actor: str
    via: str
    action: str
    outcome: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "via": self.via,
            "action": self.action,
            "outcome": self.outcome,
            "reason": self.reason,
        }


def gate_id_for(cause_event_id: str, attempt: int = 0) -> str:
    """A short id derived from the triggering event, so a retried handler opens the same gate."""
    digest = int.from_bytes(hashlib.sha256(f"{cause_event_id}/{attempt}".encode()).digest()[:8], "big")
    chars = []
    for _ in range(ID_LENGTH):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "".join(chars)


async def open_gate(conn: AsyncConnection, gate: Gate) -> Gate:
    """Store a new gate; an id already taken by another cause gets the next derived id."""
    existing = await by_cause(conn, gate.cause_event_id)
    if existing is not None:
        return existing
    candidate = gate
    for attempt in range(1, 20):
        if await get(conn, candidate.id) is None:
            break
        candidate = _with_id(gate, gate_id_for(gate.cause_event_id, attempt))
    values = _values(candidate)
    await conn.execute(insert(gates).values(**values))
    return candidate


async def get(conn: AsyncConnection, gate_id: str) -> Gate | None:
    row = (await conn.execute(select(gates).where(gates.c.id == gate_id))).first()
    return await _gate(conn, row) if row else None


async def lock(conn: AsyncConnection, gate_id: str) -> Gate | None:
    """The gate, its row locked until the transaction ends (PostgreSQL; SQLite holds the write lock)."""
    row = (await conn.execute(select(gates).where(gates.c.id == gate_id).with_for_update())).first()
    return await _gate(conn, row) if row else None


async def by_cause(conn: AsyncConnection, cause_event_id: str) -> Gate | None:
    row = (await conn.execute(select(gates).where(gates.c.cause_event_id == cause_event_id))).first()
    return await _gate(conn, row) if row else None


async def listing(conn: AsyncConnection, *, state: str | None = None, model: str | None = None) -> list[Gate]:
    query = select(gates).order_by(gates.c.created_at.desc()).limit(500)
    if state:
        query = query.where(gates.c.state == state)
    if model:
        query = query.where(gates.c.model == model)
    return [await _gate(conn, row) for row in await conn.execute(query)]


async def open_for_merge_request(conn: AsyncConnection, project: str, iid: int) -> list[Gate]:
    """Open gates whose candidate came from the merge request `project`!`iid`."""
    query = select(gates).where(
        and_(gates.c.state == "open", gates.c.project == project, gates.c.merge_request_iid == iid)
    )
    return [await _gate(conn, row) for row in await conn.execute(query)]


async def due_for_expiry(conn: AsyncConnection, now: datetime) -> list[Gate]:
    query = select(gates).where(and_(gates.c.state == "open", gates.c.expires_at <= now)).with_for_update()
    return [await _gate(conn, row) for row in await conn.execute(query)]


async def finish(
    conn: AsyncConnection, gate_id: str, state: str, by: str, reason: str, now: datetime
) -> bool:
    """Move an open gate to a final state; False when it was no longer open (someone else decided)."""
    result = await conn.execute(
        update(gates)
        .where(and_(gates.c.id == gate_id, gates.c.state == "open"))
        .values(state=state, decided_by=by, reason=reason, decided_at=now)
    )
    return result.rowcount == 1


async def add_approval(conn: AsyncConnection, gate_id: str, actor: str, now: datetime) -> None:
    await conn.execute(insert(gate_approvals).values(gate_id=gate_id, actor=actor, at=now))


async def audit(
    conn: AsyncConnection, gate_id: str, *, actor: str, via: str, action: str, outcome: str, reason: str = ""
) -> None:
    """Append one line to the gate's audit log (append-only: nothing updates or deletes it)."""
    await conn.execute(
        insert(gate_audit).values(
            gate_id=gate_id,
            at=datetime.now(UTC),
            actor=actor,
            via=via,
            action=action,
            outcome=outcome,
            reason=reason,
        )
    )


async def audit_log(conn: AsyncConnection, gate_id: str) -> list[AuditEntry]:
    rows = await conn.execute(
        select(gate_audit).where(gate_audit.c.gate_id == gate_id).order_by(gate_audit.c.seq)
    )
    return [AuditEntry(r.gate_id, _aware(r.at), r.actor, r.via, r.action, r.outcome, r.reason) for r in rows]


async def claim_action(
    conn: AsyncConnection, model: str, action: str, window: timedelta, now: datetime
) -> bool:
    """True for the first claim of (model, action) in a debounce window; the row commits with the caller."""
    result = await conn.execute(
        update(monitoring_debounce)
        .where(
            and_(
                monitoring_debounce.c.model == model,
                monitoring_debounce.c.action == action,
                monitoring_debounce.c.last_at <= now - window,
            )
        )
        .values(last_at=now)
    )
    if result.rowcount == 1:
        return True
    try:
        async with conn.begin_nested():
            await conn.execute(insert(monitoring_debounce).values(model=model, action=action, last_at=now))
    except IntegrityError:
        return False
    return True


def _with_id(gate: Gate, gate_id: str) -> Gate:
    return Gate(**{**gate.__dict__, "id": gate_id})


def _values(gate: Gate) -> dict[str, Any]:
    values = dict(gate.__dict__)
    values.pop("approvals")
    return values


async def _gate(conn: AsyncConnection, row: Any) -> Gate:
    approvals = await conn.scalars(
        select(gate_approvals.c.actor).where(gate_approvals.c.gate_id == row.id).order_by(gate_approvals.c.at)
    )
    return Gate(
        id=row.id,
        model=row.model,
        model_version=row.model_version,
        champion_version=row.champion_version,
        state=row.state,
        rules=list(row.rules),
        approvals_required=row.approvals_required,
        approver_groups=list(row.approver_groups),
        author=row.author,
        project=row.project,
        commit=row.commit,
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at),
        cause_event_id=row.cause_event_id,
        decided_at=_aware(row.decided_at) if row.decided_at else None,
        decided_by=row.decided_by,
        reason=row.reason,
        approvals=list(approvals),
        merge_request_iid=row.merge_request_iid,
        merge_request_url=row.merge_request_url or "",
        correlation_id=row.correlation_id or "",
    )


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything mlcd stores is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
