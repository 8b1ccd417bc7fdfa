"""Promotion rules in CEL: pass and fail, missing metrics, no champion, approval conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlcd import events
from mlcd.errors import ConfigError
from mlcd.policy import decisions, rules
from mlcd.policy.schema import Policy, Rule

NO_REGRESSION = "candidate.metrics.accuracy >= champion.metrics.accuracy - 0.005"
GUARDED = "champion == null || candidate.metrics.accuracy >= champion.metrics.accuracy - 0.02"


def _version(**metrics: float) -> dict[str, Any]:
    return {"version": "1", "run_id": "r", "metrics": metrics, "params": {}, "tags": {}}


CASES = [
    # (expression, candidate metrics, champion metrics or None, passed, error contains)
    ("candidate.metrics.accuracy >= 0.8", {"accuracy": 0.85}, None, True, ""),
    ("candidate.metrics.accuracy >= 0.8", {"accuracy": 0.75}, None, False, ""),
    ("candidate.metrics.accuracy >= 1", {"accuracy": 0.99}, None, False, ""),
    (NO_REGRESSION, {"accuracy": 0.897}, {"accuracy": 0.9}, True, ""),
    (NO_REGRESSION, {"accuracy": 0.89}, {"accuracy": 0.9}, False, ""),
    (NO_REGRESSION, {"accuracy": 0.95}, None, False, "there is no champion"),
    (GUARDED, {"accuracy": 0.5}, None, True, ""),
    (GUARDED, {"accuracy": 0.85}, {"accuracy": 0.9}, False, ""),
    (
        "candidate.metrics.f1_macro >= 0.75",
        {"accuracy": 0.9},
        None,
        False,
        "missing: candidate.metrics.f1_macro",
    ),
    (NO_REGRESSION, {"accuracy": 0.9}, {"f1": 0.9}, False, "missing: champion.metrics.accuracy"),
    ("candidate.metrics.accuracy", {"accuracy": 0.9}, None, False, "not true or false"),
    ("has(candidate.metrics.auc) ? candidate.metrics.auc > 0.7 : true", {"accuracy": 0.9}, None, True, ""),
    ("candidate.metrics.exists(m, candidate.metrics[m] < 0.0)", {"accuracy": 0.9}, None, False, ""),
    ("training.metrics.loss < 0.5 && data.uri.startsWith('s3://')", {"accuracy": 0.9}, None, True, ""),
]


@pytest.mark.parametrize(("expression", "candidate", "champion", "passed", "error"), CASES)
def test_rule_outcome(
    expression: str, candidate: dict[str, float], champion: dict[str, float] | None, passed: bool, error: str
) -> None:
    rule = rules.compile_rule(Rule(name="r", expr=expression))
    context = rules.Context(
        candidate=_version(**candidate),
        champion=_version(**champion) if champion is not None else None,
        data={"uri": "s3://landing/wine_quality/batch.csv"},
        training={"metrics": {"loss": 0.2}},
    )
    (outcome,) = rules.evaluate([rule], context)
    assert outcome.passed is passed
    assert error in outcome.error
    if not error:
        assert outcome.error == ""


def test_outcome_records_the_values_the_rule_saw() -> None:
    rule = rules.compile_rule(Rule(name="no_regression", expr=NO_REGRESSION))
    context = rules.Context(candidate=_version(accuracy=0.91), champion=_version(accuracy=0.9))
    (outcome,) = rules.evaluate([rule], context)
    assert outcome.values == {"candidate.metrics.accuracy": 0.91, "champion.metrics.accuracy": 0.9}


def _policy(**promotion: Any) -> Policy:
    return Policy.model_validate({"model": "m", "promotion": promotion})


def test_without_champion_first_model_rules_apply() -> None:
    compiled = rules.compile_policy(
        _policy(
            rules=[{"name": "beats_champion", "expr": NO_REGRESSION}],
            first_model_rules=[{"name": "floor", "expr": "candidate.metrics.accuracy >= 0.5"}],
        )
    )
    assert [r.name for r in compiled.rules_for(has_champion=False)] == ["floor"]
    assert [r.name for r in compiled.rules_for(has_champion=True)] == ["beats_champion"]


def test_without_first_model_rules_the_usual_rules_see_a_null_champion() -> None:
    compiled = rules.compile_policy(_policy(rules=[{"name": "guarded", "expr": GUARDED}]))
    outcomes = rules.evaluate(
        compiled.rules_for(has_champion=False), rules.Context(candidate=_version(accuracy=0.1))
    )
    assert [o.passed for o in outcomes] == [True]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("candidate.metrics.accuracy >=", "CEL syntax error at column"),
        ("foo.accuracy > 1", "unknown identifier 'foo'"),
        ("candidate.metricz.accuracy > 1", "unknown field 'metricz' of candidate"),
    ],
)
def test_broken_expression_is_refused_at_compile_time(expression: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        rules.compile_policy(_policy(rules=[{"name": "bad", "expr": expression}]))


def test_comprehension_variables_are_not_unknown_identifiers() -> None:
    assert rules.problems("candidate.metrics.all(k, candidate.metrics[k] >= 0.0)") == []


def test_approval_condition_evaluates_over_the_same_context() -> None:
    policy = Policy.model_validate(
        {"model": "m", "approval": {"when": "champion != null && candidate.metrics.accuracy < 0.99"}}
    )
    when = rules.compile_policy(policy).approval_when
    assert when is not None
    assert rules.holds(when, rules.Context(candidate=_version(accuracy=0.9))) is False
    champion = _version(accuracy=0.8)
    assert rules.holds(when, rules.Context(candidate=_version(accuracy=0.9), champion=champion)) is True


def _outcome(passed: bool) -> events.RuleOutcome:
    return events.RuleOutcome(name="r", expression="x", passed=passed)


@pytest.mark.parametrize(
    ("passed", "approval_required", "verdict"),
    [
        ([True, True], True, "open_gate"),
        ([True, True], False, "approve"),
        ([True, False], True, "reject"),
        ([True, False], False, "reject"),
        ([], False, "approve"),
    ],
)
def test_verdict(passed: list[bool], approval_required: bool, verdict: str) -> None:
    assert decisions.verdict([_outcome(p) for p in passed], approval_required) == verdict


NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _gate(**overrides: Any) -> decisions.GateFacts:
    facts: dict[str, Any] = {
        "state": "open",
        "expires_at": NOW + timedelta(hours=1),
        "author": "alice",
        "approvals_required": 1,
        "approvals": frozenset(),
        "decided_by": None,
    }
    return decisions.GateFacts(**{**facts, **overrides})


@pytest.mark.parametrize(
    ("gate", "actor", "decision", "outcome", "state"),
    [
        (_gate(), "bob", "approve", "accepted", "approved"),
        (_gate(), "bob", "reject", "accepted", "rejected"),
        (_gate(), "alice", "approve", "forbidden", "open"),
        (_gate(), "Alice", "approve", "forbidden", "open"),
        (_gate(), "alice", "reject", "accepted", "rejected"),
        (_gate(approvals_required=2), "bob", "approve", "accepted", "open"),
        (_gate(approvals_required=2, approvals=frozenset({"bob"})), "bob", "approve", "repeated", "open"),
        (
            _gate(approvals_required=2, approvals=frozenset({"bob"})),
            "carol",
            "approve",
            "accepted",
            "approved",
        ),
        (
            _gate(state="approved", decided_by="bob", approvals=frozenset({"bob"})),
            "bob",
            "approve",
            "repeated",
            "approved",
        ),
        (_gate(state="approved", decided_by="bob"), "carol", "approve", "conflict", "approved"),
        (_gate(state="approved", decided_by="bob"), "bob", "reject", "conflict", "approved"),
        (_gate(state="rejected", decided_by="bob"), "bob", "reject", "repeated", "rejected"),
        (_gate(state="expired", decided_by="mlcd"), "bob", "approve", "conflict", "expired"),
        (_gate(expires_at=NOW), "bob", "approve", "conflict", "open"),
    ],
)
def test_gate_state_machine(
    gate: decisions.GateFacts, actor: str, decision: decisions.Decision, outcome: str, state: str
) -> None:
    transition = decisions.attempt(gate, actor, decision, NOW)
    assert (transition.outcome, transition.state) == (outcome, state)


def test_second_decision_is_refused_naming_the_state_and_who_decided() -> None:
    transition = decisions.attempt(_gate(state="rejected", decided_by="bob"), "carol", "approve", NOW)
    assert transition.reason == "gate is already rejected by bob"


def test_only_open_gates_past_their_deadline_expire() -> None:
    assert decisions.expire("open", NOW, NOW)
    assert not decisions.expire("open", NOW + timedelta(seconds=1), NOW)
    assert not decisions.expire("approved", NOW - timedelta(days=1), NOW)
