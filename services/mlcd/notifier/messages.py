"""What the notifier tells people about each outcome event: what happened, why, and the exact command
or link to act. Plain functions of the event; no I/O.

Only state changes are told: a failure, a gate opening or closing, a rollout's end. Progress (a canary
step passed, a run started) is not, so a channel never repeats "still waiting" (fluxcd/flagger#427).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mlcd import events
from mlcd.adapters.notify import Message

_TAIL_LINES = 8
SYSTEM_ACTOR = "mlcd"
"""Who the gatekeeper records for what it decides itself (gate_decisions.SYSTEM_ACTOR)."""


def render(event: events.Envelope[Any], api_url: str) -> Message | None:
    """The message for `event`, or None when it is not something people are told about."""
    make = _RENDERERS.get(type(event.data))
    if make is None:
        return None
    message = make(event.data, api_url.rstrip("/"))
    if message is None:
        return None
    return Message(**{**message.as_dict(), "event_id": event.id, "event_type": event.type})


def _notice(data: events.NoticeRaised, api: str) -> Message:
    return Message(
        kind="notice",
        model=data.model,
        title="notice",
        what=data.message,
        act=[f"mlcd status {data.model}", f"mlcd events list --model {data.model}"],
        links={"on-call page": f"{api}/ui"},
    )


def _data_rejected(data: events.DataRejected, api: str) -> Message:
    why = [f"- {data.reason}"]
    why += [
        f"- expectation `{e.expectation}`"
        + (f" on column `{e.column}`" if e.column else "")
        + f" failed (observed {json.dumps(e.observed, default=str)})"
        + (f": {e.details}" if e.details else "")
        for e in data.failed
    ]
    act = [
        "# fix the batch and upload it again; the rejected one is not trained on",
        f"mlcd events list --model {data.model} --type {events.DataRejected.type}",
    ]
    if data.result_uri:
        act.append(f"# validation result: {data.result_uri}")
    return Message(
        kind="data_rejected",
        model=data.model,
        title="data batch rejected",
        what=f"The batch {data.uri} failed validation"
        + (f" against suite {data.suite}" if data.suite else "")
        + "; no training starts from it.",
        why=why,
        act=act,
    )


def _training_failed(data: events.TrainingFailed, api: str) -> Message:
    why = [f"- {data.reason}"] + ([f"- failed task: `{data.failed_task}`"] if data.failed_task else [])
    tail = [line for line in data.log_tail.splitlines() if line.strip()][-_TAIL_LINES:]
    if tail:
        why += ["- last log lines:", *(f"    {line}" for line in tail)]
    return Message(
        kind="training_failed",
        model=data.model,
        title="training failed",
        what=f"Training run {data.run_id} of {data.model} failed; the champion keeps serving.",
        why=why,
        act=[f'mlcd retrain {data.model} --reason "..."', f"mlcd status {data.model}"],
    )


def _build_failed(data: events.PipelineBuildFailed, api: str) -> Message:
    return Message(
        kind="pipeline_build_failed",
        model=data.model,
        title="pipeline build failed",
        what=f"Pipeline {data.pipeline} at commit {data.commit[:12]} did not compile; "
        "the last published version stays in use.",
        why=[f"- {' '.join(data.error.split())[:1500]}"],
        act=[f"mlcd pipelines compile pipelines/{data.pipeline}  # reproduce locally, fix, push"],
    )


def rule_lines(rules: list[events.RuleOutcome]) -> list[str]:
    """One line a rule: verdict, name, the values it saw."""
    lines = []
    for rule in rules:
        verdict = "pass" if rule.passed else "FAIL"
        seen = ", ".join(f"{path} = {json.dumps(value, default=str)}" for path, value in rule.values.items())
        lines.append(f"- {verdict} `{rule.name}`: {seen}" + (f" ({rule.error})" if rule.error else ""))
    return lines


def _gate_opened(data: events.GateOpened, api: str) -> Message:
    champion = f"version {data.champion_version}" if data.champion_version else "no champion yet"
    return Message(
        kind="gate_opened",
        model=data.model,
        title=f"promotion gate {data.gate_id} waits for approval",
        what=f"{data.model} version {data.model_version} passed its rules against {champion}. It needs "
        f"{data.approvals_required} approval(s) from {', '.join(data.approver_groups)} before "
        f"{data.expires_at.isoformat()}; after that it is rejected as expired."
        + (f" It was caused by {data.author}, who may not approve it." if data.author else ""),
        why=rule_lines(data.rules),
        act=[
            f"mlcd gates approve {data.gate_id}",
            f'mlcd gates reject {data.gate_id} --reason "..."',
            "curl -X POST -H \"Authorization: Bearer $MLCD_API_TOKEN\" -H 'Content-Type: application/json' "
            f'-d \'{{"reason": "..."}}\' {api}/api/v1/gates/{data.gate_id}/approve',
        ],
        links={
            "gate": f"{api}/api/v1/gates/{data.gate_id}",
            "on-call page": f"{api}/ui",
            # where `/mlcd approve` works, and where an approval counts when the policy says so
            **({"merge request": data.merge_request_url} if data.merge_request_url else {}),
        },
    )


def _approved(data: events.PromotionApproved, api: str) -> Message | None:
    if data.gate_id is None:
        return None  # approved by policy alone: the rollout's own notices follow
    return Message(
        kind="gate_decided",
        model=data.model,
        title=f"promotion gate {data.gate_id} approved",
        what=f"{data.model} version {data.model_version} was approved by "
        f"{', '.join(data.approved_by)}; its canary rollout starts now.",
        act=[f"mlcd status {data.model}", f'mlcd rollback {data.model} --reason "..."'],
        links={"gate": f"{api}/api/v1/gates/{data.gate_id}"},
    )


def _rejected(data: events.PromotionRejected, api: str) -> Message | None:
    if data.gate_id is None:
        return None  # rules failed without a gate: the registry's tags and the journal say why
    expired = data.rejected_by is None and data.reason == "expired"
    # the gatekeeper closes an older open gate when a newer candidate's gate opens (gate state superseded)
    superseded = data.rejected_by == SYSTEM_ACTOR and data.reason.startswith("superseded by")
    state = "expired" if expired else "superseded" if superseded else "rejected"
    return Message(
        kind="gate_expired" if expired else "gate_decided",
        model=data.model,
        title=f"promotion gate {data.gate_id} {state}",
        what=f"{data.model} version {data.model_version} "
        + ("got no decision before its deadline and is not promoted." if expired else
           f"is not promoted: its gate was {data.reason}; decide the newer gate instead." if superseded else
           f"was rejected by {data.rejected_by}: {data.reason}"),
        why=rule_lines(data.rules),
        act=[f"mlcd gates list --model {data.model} --state open", f"mlcd gates show {data.gate_id}"]
        if superseded else [f'mlcd retrain {data.model} --reason "..."', f"mlcd gates show {data.gate_id}"],
        links={"gate": f"{api}/api/v1/gates/{data.gate_id}"},
    )  # fmt: skip


def _succeeded(data: events.RolloutSucceeded, api: str) -> Message:
    before = f" (was version {data.previous_version})" if data.previous_version else ""
    return Message(
        kind="rollout_succeeded",
        model=data.model,
        title=f"version {data.model_version} serves all traffic",
        what=f"The canary rollout of {data.model} version {data.model_version} passed every step; "
        f"it is the champion now{before}.",
        act=[f"mlcd status {data.model}", f'mlcd rollback {data.model} --reason "..."'],
    )


def _paused(data: events.RolloutPaused, api: str) -> Message:
    figures = [f"- {name} = {value:g}" for name, value in sorted(data.figures.items())]
    return Message(
        kind="rollout_paused",
        model=data.model,
        title=f"rollout of version {data.model_version} paused at {data.traffic_percent}%",
        what=f"The canary rollout of {data.model} version {data.model_version} stopped at "
        f"{data.traffic_percent}% of traffic and waits for on-call; the champion keeps the rest.",
        why=[f"- {data.reason}", *figures],
        act=[
            f"mlcd rollout promote {data.model}  # the figures are good enough: all traffic to it",
            f"mlcd rollout resume {data.model}   # analyse again from this step",
            f"mlcd rollout abort {data.model}    # roll back to the champion",
            f"mlcd status {data.model}",
        ],
        links={"on-call page": f"{api}/ui"},
    )


def _rolled_back(data: events.RolledBack, api: str) -> Message:
    figures = [f"- {name} = {value:g}" for name, value in sorted(data.figures.items())]
    return Message(
        kind="rolled_back",
        model=data.model,
        title=f"rolled back to version {data.to_version or '?'}",
        what=f"{data.model} went back from version {data.from_version or '?'} to version "
        f"{data.to_version or '?'}, which serves all traffic.",
        why=[f"- {data.reason}", *figures],
        act=[f"mlcd status {data.model}", f'mlcd retrain {data.model} --reason "..."'],
    )


_RENDERERS: dict[type[events.Payload], Callable[[Any, str], Message | None]] = {
    events.NoticeRaised: _notice,
    events.DataRejected: _data_rejected,
    events.TrainingFailed: _training_failed,
    events.PipelineBuildFailed: _build_failed,
    events.GateOpened: _gate_opened,
    events.PromotionApproved: _approved,
    events.PromotionRejected: _rejected,
    events.RolloutSucceeded: _succeeded,
    events.RolloutPaused: _paused,
    events.RolledBack: _rolled_back,
}
TOLD: tuple[type[events.Payload], ...] = tuple(_RENDERERS)
