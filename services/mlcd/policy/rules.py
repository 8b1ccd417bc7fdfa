"""Promotion rules in CEL: compile them once, evaluate them over candidate, champion, data and training.

Evaluation never raises: a rule that cannot be evaluated (a missing metric, a type mismatch) is a failed
rule whose `error` says why, and each outcome carries the values the rule saw.

`data` is the batch the candidate was trained on and, when the validator's verdict on it is known, what
the expectation suite found: rows, failed expectations and per-column figures (`data_view`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, bool_ne

from mlcd import events, ports
from mlcd.errors import ConfigError
from mlcd.policy.schema import Policy, Rule

VARIABLES: dict[str, frozenset[str]] = {
    "candidate": frozenset({"version", "run_id", "metrics", "params", "tags"}),
    "champion": frozenset({"version", "run_id", "metrics", "params", "tags"}),
    "data": frozenset(
        {"uri", "validated", "suite", "rows", "expectations", "failed_expectations", "columns"}
    ),
    "training": frozenset(
        {"run_id", "model_version", "pipeline_version", "commit", "author", "data_uri", "metrics"}
    ),
}
"""The identifiers an expression may use, with the fields each one has (maps below those are open)."""

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


@dataclass(frozen=True)
class Problem:
    """Something wrong with an expression; `column` counts from 1 within the expression text."""

    message: str
    column: int = 1


@dataclass(frozen=True)
class CompiledRule:
    name: str
    expression: str
    program: celpy.Runner = field(repr=False)
    paths: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy's rules ready to evaluate; `approval_when` is None when approval does not depend on CEL."""

    rules: tuple[CompiledRule, ...]
    first_model_rules: tuple[CompiledRule, ...] | None
    approval_when: CompiledRule | None

    def rules_for(self, has_champion: bool) -> tuple[CompiledRule, ...]:
        """Without a champion the first-model rules apply if the policy has them, else the usual rules."""
        if not has_champion and self.first_model_rules is not None:
            return self.first_model_rules
        return self.rules


@dataclass(frozen=True)
class Context:
    """What a rule sees; `champion` is None when the model has no champion yet."""

    candidate: dict[str, Any]
    champion: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "data": self.data,
            "training": self.training,
        }


def version_view(version: ports.ModelVersion) -> dict[str, Any]:
    """A registry version as rules see it (`candidate` or `champion`)."""
    return {
        "version": version.version,
        "run_id": version.run_id or "",
        "metrics": {name: float(value) for name, value in version.metrics.items()},
        "params": dict(version.params),
        "tags": dict(version.tags),
    }


def training_view(trained: events.TrainingSucceeded) -> dict[str, Any]:
    """What rules read as `training.*`: the run that produced the candidate."""
    return {
        "run_id": trained.run_id,
        "model_version": trained.model_version,
        "pipeline_version": trained.pipeline_version,
        "commit": trained.commit,
        "author": trained.author,
        "data_uri": trained.data_uri,
        "metrics": dict(trained.metrics),
    }


def data_view(uri: str, verdict: events.DataValidated | events.DataRejected | None) -> dict[str, Any]:
    """The batch as rules see it (`data`). Always `uri`; with the validator's verdict also `validated`
    (passed the suite), `suite`, `failed_expectations` (each `{expectation, column, observed, details}`)
    and `columns` (per column: the figures its expectations observed, e.g. `mean`, `max`, `type`, and the
    most rows any one of its value checks found out of place, `unexpected_count`/`unexpected_percent`).
    `rows` and `expectations` (how many were checked) only for a batch that passed: a rejection lists
    the failures alone. A field the verdict does not give is missing, and a rule reading it fails."""
    view: dict[str, Any] = {"uri": uri}
    if verdict is None:
        return view
    if isinstance(verdict, events.DataValidated):
        results = verdict.expectations
        view |= {"validated": True, "rows": verdict.rows, "expectations": len(results)}
    else:
        results = verdict.failed
        view["validated"] = False
    view["suite"] = verdict.suite
    view["failed_expectations"] = [
        {"expectation": e.expectation, "column": e.column or "", "observed": e.observed, "details": e.details}
        for e in results
        if not e.success
    ]
    view["columns"] = _column_figures(results)
    return view


VALUE_CHECK_FIGURES = ("unexpected_count", "unexpected_percent")


def column_figures(expectation: str) -> tuple[str, ...]:
    """The `data.columns["NAME"]` figures an expectation on one column gives rules: its statistic
    (`expect_column_mean_to_be_between` → `mean`), `type` for a type check, the out-of-place counts for a
    value check (`expect_column_values_…`, `expect_column_value_…`); none for `expect_column_to_exist`."""
    if expectation.endswith(("_in_type_list", "_of_type")):
        return ("type",)
    stem = expectation.removeprefix("expect_column_").split("_to_", 1)[0]
    if not stem or stem.startswith("to_"):
        return ()
    if stem == "values" or stem.startswith("value_"):
        return VALUE_CHECK_FIGURES
    return (stem,)


def column_references(expression: str) -> list[tuple[str, str | None]]:
    """Each `data.columns["NAME"].figure` the expression reads, as (NAME, figure or None)."""
    try:
        tree = _environment().compile(expression)
        found = [
            (str(path[1]), str(path[2]) if len(path) > 2 else None)
            for name, _, path in _references(tree)
            if name == "data" and len(path) > 1 and path[0] == "columns" and isinstance(path[1], _Key)
        ]
    except (CELParseError, RecursionError):
        return []
    return list(dict.fromkeys(found))


def _column_figures(results: Sequence[events.ExpectationResult]) -> dict[str, dict[str, Any]]:
    columns: dict[str, dict[str, Any]] = {}
    for result in results:
        if not result.column:
            continue
        figures = columns.setdefault(result.column, {})
        observed = result.observed
        if observed is None:
            continue
        if isinstance(observed, Mapping) and "unexpected_count" in observed:
            for key in VALUE_CHECK_FIGURES:
                value = observed.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    figures[key] = max(figures.get(key, value), value)
            continue
        names = column_figures(result.expectation)
        if names and names != VALUE_CHECK_FIGURES:
            figures[names[0]] = observed
    return columns


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment()


def problems(expression: str) -> list[Problem]:
    """Syntax errors, unknown identifiers and unknown fields of one expression; empty when it is sound."""
    try:
        return _problems(expression)
    except RecursionError:
        return [Problem("CEL expression nested too deeply to read")]


def _problems(expression: str) -> list[Problem]:
    try:
        tree = _environment().compile(expression)
    except CELParseError as e:
        column = int(e.column or 1)
        rest = expression[column - 1 :].strip()
        where = f"unexpected {rest[:20]!r}" if rest else "unexpected end of expression"
        return [Problem(f"CEL syntax error at column {column}: {where}", column)]
    found: list[Problem] = []
    for name, column, path in _references(tree):
        if name not in VARIABLES:
            known = ", ".join(VARIABLES)
            found.append(Problem(f"unknown identifier {name!r} (known: {known})", column))
        elif path and path[0] not in VARIABLES[name]:
            known = ", ".join(sorted(VARIABLES[name]))
            found.append(Problem(f"unknown field {path[0]!r} of {name} (known: {known})", column))
    return found


def compile_rule(rule: Rule) -> CompiledRule:
    """ConfigError names the rule and each problem of its expression."""
    return _compile(rule.name, rule.expr)


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile every expression of the policy; ConfigError lists what is wrong with which rule."""
    errors: list[str] = []

    def attempt(name: str, expression: str) -> CompiledRule | None:
        try:
            return _compile(name, expression)
        except ConfigError as e:
            errors.append(str(e))
            return None

    rules = [attempt(r.name, r.expr) for r in policy.promotion.rules]
    first = [attempt(r.name, r.expr) for r in policy.promotion.first_model_rules or []]
    when = attempt("approval.when", policy.approval.when) if policy.approval.when else None
    if errors:
        raise ConfigError(f"policy {policy.model!r}: " + "; ".join(errors))
    return CompiledPolicy(
        rules=tuple(r for r in rules if r is not None),
        first_model_rules=tuple(r for r in first if r is not None)
        if policy.promotion.first_model_rules is not None
        else None,
        approval_when=when,
    )


def evaluate(rules: Sequence[CompiledRule], context: Context) -> list[events.RuleOutcome]:
    """Every rule's outcome with the values it referenced; a rule that cannot be evaluated fails."""
    activation = {name: json_to_cel(value) for name, value in context.as_dict().items()}
    return [_evaluate_one(rule, activation, context) for rule in rules]


def holds(rule: CompiledRule, context: Context) -> bool | None:
    """The boolean value of one expression, or None when it cannot be evaluated."""
    outcome = evaluate([rule], context)[0]
    return None if outcome.error else outcome.passed


def _compile(name: str, expression: str) -> CompiledRule:
    found = problems(expression)
    if found:
        raise ConfigError(f"rule {name!r}: " + "; ".join(p.message for p in found))
    environment = _environment()
    tree = environment.compile(expression)
    paths = tuple(dict.fromkeys((root, *path) for root, _, path in _references(tree)))
    return CompiledRule(name, expression, environment.program(tree, functions={"_!=_": _not_equal}), paths)


def _not_equal(left: Any, right: Any) -> Any:
    # cel-python 0.5 compares a map with null for == but raises for !=; `champion != null` must work.
    if left is None or right is None:
        return celpy.celtypes.BoolType(not (left is None and right is None))
    return bool_ne(left, right)


def _evaluate_one(rule: CompiledRule, activation: dict[str, Any], context: Context) -> events.RuleOutcome:
    seen, missing = _values(rule.paths, context.as_dict())
    try:
        result = rule.program.evaluate(activation)
    except CELEvalError as e:
        return _failed(rule, seen, _explain(e, missing, context))
    except RecursionError:
        return _failed(rule, seen, "expression nested too deeply to evaluate")
    if isinstance(result, CELEvalError):
        return _failed(rule, seen, _explain(result, missing, context))
    if not isinstance(result, celpy.celtypes.BoolType):
        return _failed(rule, seen, f"evaluates to {result!r}, not true or false")
    return events.RuleOutcome(name=rule.name, expression=rule.expression, passed=bool(result), values=seen)


def _failed(rule: CompiledRule, seen: dict[str, Any], error: str) -> events.RuleOutcome:
    return events.RuleOutcome(
        name=rule.name, expression=rule.expression, passed=False, values=seen, error=error
    )


def _explain(error: CELEvalError, missing: list[str], context: Context) -> str:
    if missing:
        return "missing: " + ", ".join(missing) + _no_verdict(missing, context)
    return str(error.args[0]) if error.args else type(error).__name__


def _values(paths: Sequence[tuple[str, ...]], context: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The value under each referenced path; paths that lead nowhere are listed as missing."""
    seen: dict[str, Any] = {}
    missing: list[str] = []
    for root, *rest in paths:
        shown = _shown(root, rest)
        value: Any = context.get(root)
        for part in rest:
            if not isinstance(value, Mapping):
                missing.append(f"{shown} (there is no {root})" if context.get(root) is None else shown)
                value = None
                break
            if part not in value:
                missing.append(shown)
                value = None
                break
            value = value[part]
        if not rest and isinstance(value, Mapping):
            value = (
                f"version {value.get('version', '?')}"  # a whole candidate or champion: name it, not dump it
            )
        seen[shown] = value
    return seen, missing


def _no_verdict(missing: list[str], context: Context) -> str:
    if "validated" in context.data or not any(m.startswith("data.") for m in missing):
        return ""
    uri = context.data.get("uri")
    return f" (no validation result for batch {uri})" if uri else " (the candidate names no data batch)"


class _Key(str):
    """A path part selected by a string index (`columns["alcohol"]`) rather than by a field name."""


def _shown(root: str, parts: Sequence[str]) -> str:
    """The path as a rule writes it: `data.columns["alcohol"].mean`."""
    return root + "".join(f"[{json.dumps(str(p))}]" if isinstance(p, _Key) else f".{p}" for p in parts)


def _references(tree: lark.Tree[Any]) -> Iterator[tuple[str, int, tuple[str, ...]]]:
    """Each free identifier with its column and the field names selected on it (`a.b.c` → ('b', 'c'))."""
    yield from _walk(tree, frozenset())


def _walk(node: lark.Tree[Any], bound: frozenset[str]) -> Iterator[tuple[str, int, tuple[str, ...]]]:
    if node.data == "member_dot_arg" and len(node.children) >= 3:
        target, method, arguments = node.children[0], node.children[1], node.children[2]
        yield from _walk_child(target, bound)
        if str(method) in _MACROS and isinstance(arguments, lark.Tree) and arguments.children:
            variable = _single_ident(arguments.children[0])
            inner = bound | {variable} if variable else bound
            for argument in arguments.children[1:]:
                yield from _walk_child(argument, inner)
        else:
            yield from _walk_child(arguments, bound)
        return
    if node.data in {"member_dot", "member_index", "primary"}:
        chain = _dotted(node)
        if chain is not None:
            (name, column), path = chain
            if name not in bound:
                yield name, column, path
            return
    for child in node.children:
        yield from _walk_child(child, bound)


def _walk_child(child: Any, bound: frozenset[str]) -> Iterator[tuple[str, int, tuple[str, ...]]]:
    if isinstance(child, lark.Tree):
        yield from _walk(child, bound)


def _dotted(node: lark.Tree[Any]) -> tuple[tuple[str, int], tuple[str, ...]] | None:
    """`ident(.field)*` as ((ident, column), fields); None for anything else."""
    if node.data == "primary":
        ident = node.children[0] if node.children else None
        if isinstance(ident, lark.Tree) and ident.data == "ident" and ident.children:
            token = ident.children[0]
            return (str(token), int(getattr(token, "column", 1) or 1)), ()
        return None
    if node.data == "member_dot" and len(node.children) == 2:
        found = _dotted_member(node.children[0])
        if found is not None:
            return found[0], (*found[1], str(node.children[1]))
    if node.data == "member_index" and len(node.children) == 2:
        key = _string_literal(node.children[1])
        found = _dotted_member(node.children[0])
        if key is not None and found is not None:
            return found[0], (*found[1], _Key(key))
    return None


def _dotted_member(member: Any) -> tuple[tuple[str, int], tuple[str, ...]] | None:
    if isinstance(member, lark.Tree) and member.data == "member" and member.children:
        head = member.children[0]
        if isinstance(head, lark.Tree):
            return _dotted(head)
    return None


def _string_literal(expr: Any) -> str | None:
    """The text of an index that is a plain quoted string with no escapes (`"alcohol"`), else None."""
    if not isinstance(expr, lark.Tree):
        return None
    leaves = [t for t in expr.iter_subtrees() if t.data == "literal"]
    if len(leaves) != 1 or len(list(expr.scan_values(lambda _: True))) != 1:
        return None
    text = str(leaves[0].children[0])
    if text[:3] in {'"""', "'''"} or "\\" in text:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return None


def _single_ident(expr: Any) -> str | None:
    for subtree in expr.iter_subtrees() if isinstance(expr, lark.Tree) else ():
        if subtree.data == "ident" and subtree.children:
            return str(subtree.children[0])
    return None
