"""One way to decide a gate, shared by the HTTP API, the CLI (through the API) and merge-request comments.

Every attempt leaves an audit line, refused ones included; a final decision emits PromotionApproved or
PromotionRejected in the same transaction as the gate's new state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mlcd import events, logs, tracing
from mlcd.policy import decisions
from mlcd.store import gates
from mlcd.store.unit_of_work import Transaction

log = logs.get(__name__)

Authorise = Callable[[gates.Gate], Awaitable[str | None]]
"""Answers why the actor may not decide this gate, or None when they may."""

Status = Literal["accepted", "repeated", "conflict", "forbidden", "not_found"]
SYSTEM_ACTOR = "mlcd"


@dataclass(frozen=True)
class DecisionResult:
    status: Status
    gate: gates.Gate | None
    message: str


async def decide(
    tx: Transaction,
    gate_id: str,
    *,
    actor: str,
    via: str,
    decision: decisions.Decision,
    reason: str,
    authorise: Authorise,
) -> DecisionResult:
    """Apply one decision attempt; never raises for a refusal, so the audit line always commits."""
    conn = tx.connection
    now = datetime.now(UTC)
    gate = await gates.lock(conn, gate_id)
    if gate is None:
        await _audit(tx, gate_id, actor, via, decision, "refused", "no such gate")
        return DecisionResult("not_found", None, f"no gate {gate_id!r}")
    refusal = await authorise(gate)
    if refusal:
        await _audit(tx, gate_id, actor, via, decision, "refused", refusal)
        return DecisionResult("forbidden", gate, refusal)
    if decisions.expire(_state(gate), gate.expires_at, now):
        gate = await expire(tx, gate, now)
    transition = decisions.attempt(_facts(gate), actor, decision, now)
    if transition.outcome in {"conflict", "forbidden"}:
        await _audit(tx, gate_id, actor, via, decision, "refused", transition.reason)
        return DecisionResult(transition.outcome, gate, transition.reason)
    if transition.outcome == "repeated":
        await _audit(tx, gate_id, actor, via, decision, "accepted", f"repeated: {transition.reason}")
        return DecisionResult("repeated", gate, transition.reason)
    if transition.final and not await gates.finish(conn, gate_id, transition.state, actor, reason, now):
        # Unreachable while the row lock holds; without it the conditional update still lets one decision win.
        gate = await gates.get(conn, gate_id) or gate
        message = f"gate is already {gate.state} by {gate.decided_by}"
        await _audit(tx, gate_id, actor, via, decision, "refused", message)
        return DecisionResult("conflict", gate, message)
    if transition.record_approval:
        await gates.add_approval(conn, gate_id, actor, now)
    await _audit(tx, gate_id, actor, via, decision, "accepted", reason or transition.reason)
    gate = await gates.get(conn, gate_id) or gate
    if transition.final:
        _announce(tx, gate, actor, reason)
    log.info("gate decided", gate_id=gate_id, actor=actor, via=via, decision=decision, state=gate.state)
    return DecisionResult("accepted", gate, transition.reason or f"gate {gate.state}")


async def expire(tx: Transaction, gate: gates.Gate, now: datetime) -> gates.Gate:
    """Expire an open gate past its deadline: the promotion is rejected as expired."""
    if not await gates.finish(tx.connection, gate.id, "expired", SYSTEM_ACTOR, "expired", now):
        return await gates.get(tx.connection, gate.id) or gate
    await _audit(tx, gate.id, SYSTEM_ACTOR, "timer", "expire", "accepted", "no decision before the deadline")
    with tracing.following(gate.correlation_id, gate.cause_event_id):
        tx.emit(
            events.PromotionRejected(
                model=gate.model,
                model_version=gate.model_version,
                reason="expired",
                gate_id=gate.id,
                rules=_outcomes(gate),
            )
        )
    log.info("gate expired", gate_id=gate.id, model=gate.model)
    return await gates.get(tx.connection, gate.id) or gate


def _announce(tx: Transaction, gate: gates.Gate, actor: str, reason: str) -> None:
    with tracing.following(
        gate.correlation_id, gate.cause_event_id
    ):  # the decision continues the gate's chain
        _announce_in_chain(tx, gate, actor, reason)


def _announce_in_chain(tx: Transaction, gate: gates.Gate, actor: str, reason: str) -> None:
    if gate.state == "approved":
        tx.emit(
            events.PromotionApproved(
                model=gate.model,
                model_version=gate.model_version,
                gate_id=gate.id,
                approved_by=gate.approvals or [actor],
                rules=_outcomes(gate),
            )
        )
    else:
        tx.emit(
            events.PromotionRejected(
                model=gate.model,
                model_version=gate.model_version,
                reason=reason or f"rejected by {actor}",
                gate_id=gate.id,
                rules=_outcomes(gate),
                rejected_by=actor,
            )
        )


async def _audit(
    tx: Transaction, gate_id: str, actor: str, via: str, action: str, outcome: str, reason: str
) -> None:
    await gates.audit(
        tx.connection, gate_id, actor=actor, via=via, action=action, outcome=outcome, reason=reason
    )


def _facts(gate: gates.Gate) -> decisions.GateFacts:
    return decisions.GateFacts(
        state=_state(gate),
        expires_at=gate.expires_at,
        author=gate.author,
        approvals_required=gate.approvals_required,
        approvals=frozenset(gate.approvals),
        decided_by=gate.decided_by,
    )


def _state(gate: gates.Gate) -> decisions.GateState:
    state = gate.state
    if state not in {"open", "approved", "rejected", "expired", "superseded"}:
        raise ValueError(f"gate {gate.id} has an unknown state {state!r}")
    return state  # type: ignore[return-value]


def _outcomes(gate: gates.Gate) -> list[events.RuleOutcome]:
    return [events.RuleOutcome.model_validate(rule) for rule in gate.rules]
