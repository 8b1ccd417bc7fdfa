"""A model version's lineage, read from the event journal: where it came from (the data batch and its
validation, the pipeline version and its commit, the training run and what triggered it) and where it went
(the gate and who decided it through which surface, the rollouts, the rollbacks).

Pure: the model's journaled events in (structured CloudEvents, oldest first), the graph out. It holds what
the journal holds, so a version older than the journal's retention has a partial lineage; `missing` says
which links could not be found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from mlcd import events

Event = dict[str, Any]


class Step(BaseModel):
    """One node of the graph: the event that recorded it, and a line a person reads."""

    step: str
    type: str
    id: str
    time: str | None
    summary: str
    data: dict[str, Any] = Field(default_factory=dict)
    correlation: str | None = Field(None, description="The correlation id of the chain the event is in.")


class Lineage(BaseModel):
    model: str
    version: str
    steps: list[Step]
    missing: list[str] = Field(
        default_factory=list, description="Links expected for this version that the journal does not hold."
    )
    correlation: str | None = Field(
        None, description="The chain that trained (else registered) the version: its correlation id."
    )


def of_version(journal: Sequence[Event], model: str, version: str) -> Lineage | None:
    """The lineage of `model` version `version`, or None when no journaled event names that version."""
    trained = _last(journal, events.TrainingSucceeded, model_version=version)
    registered = _last(journal, events.CandidateRegistered, model_version=version)
    gate = _last(journal, events.GateOpened, model_version=version)
    if trained is not None:
        came_from = origin(journal, trained)
        before, missing = [*came_from.events, trained], came_from.missing
    else:  # registered outside mlcd, or trained before the journal's retention began
        before, missing = [registered], [] if registered is not None else ["model version"]
    after = [
        *([gate] if gate is not None else []),
        *_all(journal, events.PromotionApproved, model_version=version),
        *_all(journal, events.PromotionRejected, model_version=version),
        *_all(journal, events.RolloutStarted, model_version=version),
        *_all(journal, events.RolloutStepCompleted, model_version=version),
        *_all(journal, events.RolloutSucceeded, model_version=version),
        *_all(journal, events.RolledBack, from_version=version),
        *_all(journal, events.RolledBack, to_version=version),
    ]
    position = {e["id"]: index for index, e in enumerate(journal)}
    after.sort(key=lambda e: position[e["id"]])
    steps = [_step(e, version) for e in [*before, *after] if e is not None]
    if not steps:
        return None
    chain = next((e.get("correlationid") for e in (trained, registered) if e is not None), None)
    return Lineage(model=model, version=version, steps=steps, missing=missing, correlation=chain)


@dataclass(frozen=True)
class Origin:
    """What a trained version came from, each link None where the journal does not hold it."""

    arrived: Event | None
    validated: Event | None
    published: Event | None
    trigger: Event | None  # a retrain request (on-call, a drift policy): a link of its own
    started: Event | None
    missing: list[str]

    @property
    def events(self) -> list[Event | None]:
        return [self.arrived, self.validated, self.published, self.trigger, self.started]


def origin(journal: Sequence[Event], trained: Event) -> Origin:
    """The batch and validation (the very upload the run was pinned to, when the same key was uploaded more
    than once), the pipeline version, the run's start and what triggered it, of a TrainingSucceeded."""
    started = _last(journal, events.TrainingStarted, run_id=trained["data"]["run_id"])
    data_uri = trained["data"]["data_uri"]
    run = (started or {"data": {}})["data"]
    pin = batch_pin(run.get("data_etag", ""), run.get("data_version_id", ""))
    arrived = _last(journal, events.DataArrived, uri=data_uri, **pin)
    validated = _last(journal, events.DataValidated, uri=data_uri, **pin)
    pipeline_version = trained["data"].get("pipeline_version") or run.get("pipeline_version", "")
    published = None
    if pipeline_version:
        published = _last(journal, events.PipelinePublished, version=pipeline_version)
    trigger_id = started["data"]["trigger_event_id"] if started else None
    chained = {e["id"] for e in (arrived, validated, published) if e is not None}
    # a retrain request is a link of its own; a batch or a pipeline is one already
    trigger = next((e for e in journal if e["id"] == trigger_id and trigger_id not in chained), None)
    links = {"data batch": arrived, "validation": validated, "training start": started}
    if pipeline_version:
        links["pipeline version"] = published
    missing = [name for name, found in links.items() if found is None]
    return Origin(arrived, validated, published, trigger, started, missing)


def batch_pin(etag: str, version_id: str) -> dict[str, str]:
    """The DataArrived fields naming the upload whose bytes were pinned: its version, else its ETag (none:
    not pinned, any upload to the URI)."""
    if version_id:
        return {"version_id": version_id}
    return {"etag": etag} if etag else {}


def with_decisions(lineage: Lineage, audit: Sequence[dict[str, Any]]) -> Lineage:
    """The lineage with its gate's audit (every decision tried, by whom, through which surface, accepted
    or refused) after the gate's step; `audit`: the gate's entries oldest first (`AuditEntry.as_dict`)."""
    gate = next((i for i, s in enumerate(lineage.steps) if s.type == events.GateOpened.type), None)
    if gate is None or not audit:
        return lineage
    gate_id = lineage.steps[gate].data["gate_id"]
    decisions = [
        Step(
            step="decision",
            type="mlcd.gate.audit",
            id=f"{gate_id}/audit/{n}",
            time=entry["at"],
            summary=f"{entry['actor']} → {entry['action']} via {entry['via']}: {entry['outcome']}"
            + (f" ({entry['reason']})" if entry.get("reason") else ""),
            data=dict(entry),
        )
        for n, entry in enumerate(audit, start=1)
    ]
    steps = [*lineage.steps[: gate + 1], *decisions, *lineage.steps[gate + 1 :]]
    return lineage.model_copy(update={"steps": steps})


def render(lineage: Lineage) -> list[str]:
    """The lineage as lines for a terminal, oldest link first."""
    chain = f", chain {lineage.correlation}" if lineage.correlation else ""
    lines = [f"{lineage.model} version {lineage.version}{chain}"]
    lines += [
        f"  {s.step:<14} {(s.time or '')[:19]:<19}  {s.summary}"
        + (f"  [chain {s.correlation}]" if s.correlation and s.correlation != lineage.correlation else "")
        for s in lineage.steps
    ]
    if lineage.missing:
        lines.append(f"  not in the journal: {', '.join(lineage.missing)}")
    return lines


def _last(journal: Sequence[Event], kind: type[events.Payload], **fields: Any) -> Event | None:
    found = _all(journal, kind, **fields)
    return found[-1] if found else None


def _all(journal: Sequence[Event], kind: type[events.Payload], **fields: Any) -> list[Event]:
    return [
        e
        for e in journal
        if e["type"] == kind.type and all(e["data"].get(name) == value for name, value in fields.items())
    ]


def _step(event: Event, version: str) -> Step:
    name, summarise = _STEPS.get(event["type"], ("event", lambda d, v: event["type"]))
    return Step(
        step=name,
        type=event["type"],
        id=event["id"],
        time=event.get("time"),
        summary=summarise(event["data"], version),
        data=event["data"],
        correlation=event.get("correlationid"),
    )


def _arrived(d: dict[str, Any], _: str) -> str:
    pinned = f"version {d['version_id']}" if d.get("version_id") else f"etag {d.get('etag') or '?'}"
    by = f" by {d['author']}" if d.get("author") else ""
    return f"{d['uri']} ({d['size']} bytes, {pinned}){by}"


def _validated(d: dict[str, Any], _: str) -> str:
    failed = sum(1 for x in d.get("expectations", []) if not x.get("success", True))
    return f"passed suite {d['suite']}: {d['rows']} rows, {failed} failed expectations"


def _published(d: dict[str, Any], _: str) -> str:
    by = f" pushed by {d['author']}" if d.get("author") else ""
    return f"pipeline {d['pipeline']} version {d['version']} from commit {d['commit'][:12]}{by}"


def _started(d: dict[str, Any], _: str) -> str:
    run = d["run_name"] if d["run_name"] == d["run_id"] else f"{d['run_name']} ({d['run_id']})"
    if d.get("data_version_id"):
        read = f"version {d['data_version_id']}, as validated"
    elif d.get("data_etag"):
        read = f"etag {d['data_etag']}, as validated"
    else:
        read = "the object as it was at the run, not pinned"
    return f"run {run} on {d['data_uri']} ({read})"


def _trained(d: dict[str, Any], _: str) -> str:
    figures = ", ".join(f"{k}={v:.4g}" for k, v in sorted(d.get("metrics", {}).items()))
    return f"registered version {d['model_version']}" + (f" ({figures})" if figures else "")


def _gate(d: dict[str, Any], _: str) -> str:
    failed = [r["name"] for r in d.get("rules", []) if not r.get("passed")]
    champion = d.get("champion_version") or "none"
    return f"gate {d['gate_id']} opened against champion {champion}" + (
        f"; failing rules {', '.join(failed)}" if failed else "; every rule passed"
    )


def _approved(d: dict[str, Any], _: str) -> str:
    return f"approved by {', '.join(d.get('approved_by') or ['policy'])}"


def _rejected(d: dict[str, Any], _: str) -> str:
    return f"rejected: {d['reason']}" + (f" (by {d['rejected_by']})" if d.get("rejected_by") else "")


def _rollout(d: dict[str, Any], _: str) -> str:
    return f"rollout started, steps {d['steps']}, replacing {d.get('previous_version') or 'nothing'}"


def _step_done(d: dict[str, Any], _: str) -> str:
    figures = ", ".join(f"{k}={v:.4g}" for k, v in sorted(d.get("analysis", {}).items()))
    return f"{d['traffic_percent']}% of traffic" + (f", analysis {figures}" if figures else "")


def _rolled_back(d: dict[str, Any], version: str) -> str:
    direction = "away from this version" if d.get("from_version") == version else "to this version"
    return f"rolled back {direction} ({d.get('from_version')} → {d.get('to_version')}): {d['reason']}"


def _retrain(d: dict[str, Any], _: str) -> str:
    return f"retrain requested: {d['reason']}"


def _registered(d: dict[str, Any], _: str) -> str:
    return f"version {d['model_version']} registered outside mlcd" + (
        f" ({d['source']})" if d.get("source") else ""
    )


_STEPS: dict[str, tuple[str, Callable[[dict[str, Any], str], str]]] = {
    events.DataArrived.type: ("data batch", _arrived),
    events.DataValidated.type: ("validation", _validated),
    events.PipelinePublished.type: ("pipeline", _published),
    events.RetrainRequested.type: ("trigger", _retrain),
    events.TrainingStarted.type: ("training run", _started),
    events.TrainingSucceeded.type: ("model version", _trained),
    events.CandidateRegistered.type: ("model version", _registered),
    events.GateOpened.type: ("gate", _gate),
    events.PromotionApproved.type: ("promotion", _approved),
    events.PromotionRejected.type: ("promotion", _rejected),
    events.RolloutStarted.type: ("rollout", _rollout),
    events.RolloutStepCompleted.type: ("rollout step", _step_done),
    events.RolloutSucceeded.type: (
        "rollout",
        lambda d, v: f"succeeded: version {d['model_version']} serves all traffic",
    ),
    events.RolledBack.type: ("rollback", _rolled_back),
}
