"""The texts people read when a gate opens: the rule table and the exact commands to decide it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mlcd import events


def rule_table(rules: Sequence[events.RuleOutcome]) -> str:
    """A Markdown table: rule, result, the values it saw (GitLab and Slack both render it legibly)."""
    lines = ["| rule | result | values |", "|---|---|---|"]
    for rule in rules:
        result = "pass" if rule.passed else f"FAIL{': ' + rule.error if rule.error else ''}"
        lines.append(f"| `{rule.name}` | {result} | {_values(rule.values)} |")
    return "\n".join(lines)


def gate_opened(gate: events.GateOpened, api_url: str) -> tuple[str, str]:
    """(title, Markdown body) of the notice that a gate waits for an on-call decision."""
    champion = f"version {gate.champion_version}" if gate.champion_version else "no champion yet"
    title = f"promotion gate {gate.gate_id}: {gate.model} version {gate.model_version} waits for approval"
    where = (
        f"on its merge request {gate.merge_request_url}"
        if gate.merge_request_url
        else f"on any merge request of {gate.model}'s project"
    )
    author = f" It was caused by {gate.author}, who may not approve it." if gate.author else ""
    body = "\n".join(
        [
            f"**{gate.model}** version **{gate.model_version}** passed its rules (against {champion})."
            + author,
            f"It needs {gate.approvals_required} approval(s) from {', '.join(gate.approver_groups)} "
            f"before {gate.expires_at.isoformat()}; after that it is rejected as expired.",
            "",
            rule_table(gate.rules),
            "",
            "Decide with one of:",
            "```",
            f"mlcd gates approve {gate.gate_id}",
            f'mlcd gates reject {gate.gate_id} --reason "..."',
            "curl -X POST -H \"Authorization: Bearer $MLCD_API_TOKEN\" -H 'Content-Type: application/json' "
            f'-d \'{{"reason": "..."}}\' {api_url}/api/v1/gates/{gate.gate_id}/approve',
            "```",
            f"or comment `/mlcd approve {gate.gate_id}` (or `/mlcd reject {gate.gate_id} <reason>`) "
            f"{where} (as a GitLab user the policy lists for an approver group, or a Maintainer of the "
            "project).",
        ]
    )
    return title, body


def decision_reply(gate_id: str, actor: str, decision: str, status: str, message: str) -> str:
    """The merge-request reply to a `/mlcd approve|reject` comment."""
    if status in {"accepted", "repeated"}:
        return f"mlcd: {decision} of gate `{gate_id}` by @{actor} accepted: {message}."
    return f"mlcd: {decision} of gate `{gate_id}` by @{actor} refused: {message}."


def _values(values: dict[str, Any]) -> str:
    if not values:
        return ""
    return ", ".join(f"`{path}` = {json.dumps(value, default=str)}" for path, value in values.items())
