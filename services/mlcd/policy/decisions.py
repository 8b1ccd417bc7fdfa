"""Promotion decisions and the gate state machine, as pure functions.

A gate goes open → approved | rejected | expired and never leaves a final state. The first decision
wins; a second one is refused with the state the gate is in; the same actor repeating the decision
that stands is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from mlcd import events

Verdict = Literal["reject", "open_gate", "approve"]
GateState = Literal["open", "approved", "rejected", "expired", "superseded"]
Decision = Literal["approve", "reject"]
Outcome = Literal["accepted", "repeated", "conflict", "forbidden"]
"""conflict: the gate's state does not allow it (HTTP 409); forbidden: this actor may not (HTTP 403)."""

FINAL_STATES: frozenset[str] = frozenset({"approved", "rejected", "expired", "superseded"})
_STATE_OF: dict[Decision, GateState] = {"approve": "approved", "reject": "rejected"}


def verdict(outcomes: Sequence[events.RuleOutcome], approval_required: bool) -> Verdict:
    """Any failed rule rejects; otherwise a gate opens when approval is required, else it is approved."""
    if any(not o.passed for o in outcomes):
        return "reject"
    return "open_gate" if approval_required else "approve"


def rejection_reason(outcomes: Sequence[events.RuleOutcome]) -> str:
    """One line naming every failed rule and why."""
    failed = [f"{o.name} ({o.error})" if o.error else o.name for o in outcomes if not o.passed]
    return "rules failed: " + ", ".join(failed) if failed else ""


@dataclass(frozen=True)
class GateFacts:
    """What the state machine needs to know about a gate."""

    state: GateState
    expires_at: datetime
    author: str
    approvals_required: int
    approvals: frozenset[str]
    decided_by: str | None = None


@dataclass(frozen=True)
class Transition:
    """The result of a decision attempt: `state` is the gate's state afterwards."""

    outcome: Outcome
    state: GateState
    reason: str = ""
    record_approval: bool = False

    @property
    def final(self) -> bool:
        """True when this attempt moved the gate into a final state."""
        return self.outcome == "accepted" and self.state in FINAL_STATES


def attempt(gate: GateFacts, actor: str, decision: Decision, now: datetime) -> Transition:
    """Apply `actor`'s decision to the gate (authorisation is checked before, by the caller)."""
    if gate.state in FINAL_STATES:
        if _repeats(gate, actor, decision):
            return Transition("repeated", gate.state, f"{actor} already {gate.state} this gate")
        by = f" by {gate.decided_by}" if gate.decided_by else ""
        return Transition("conflict", gate.state, f"gate is already {gate.state}{by}")
    if now >= gate.expires_at:
        return Transition("conflict", gate.state, "gate has expired")
    if decision == "reject":
        return Transition("accepted", "rejected")
    if gate.author and actor.lower() == gate.author.lower():
        return Transition("forbidden", gate.state, "the author of the change may not approve it")
    if actor in gate.approvals:
        return Transition("repeated", gate.state, f"{actor} already approved; waiting for more approvals")
    if len(gate.approvals) + 1 >= gate.approvals_required:
        return Transition("accepted", "approved", record_approval=True)
    missing = gate.approvals_required - len(gate.approvals) - 1
    return Transition("accepted", "open", f"approval recorded; {missing} more needed", record_approval=True)


def expire(state: GateState, expires_at: datetime, now: datetime) -> bool:
    """True when an open gate is past its deadline and must expire."""
    return state == "open" and now >= expires_at


def _repeats(gate: GateFacts, actor: str, decision: Decision) -> bool:
    if gate.state != _STATE_OF[decision]:
        return False
    return gate.decided_by == actor or (decision == "approve" and actor in gate.approvals)
