"""The chain's events as lineage steps: which run of which step an event begins, moves or ends, and the
datasets it reads and writes.

Pure. An event that ends a run (a validation, a training run, a gate, a rollout) names the run by the
event that began it, found in the journal (`lookups` says what to look for); every state of one run so
carries the same `run_key`, and a redelivered event yields the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from mlcd import events, lineage
from mlcd.ports import LineageDataset, LineageJob, LineageState, LineageStep

Event = dict[str, Any]
"""A journaled event: a structured CloudEvent (`id`, `type`, `time`, `data`)."""

MODEL_NAMESPACE = "mlflow"


class Unlinked(Exception):
    """The event that began this run is not in the journal (yet): the run cannot be named."""


@dataclass(frozen=True)
class Lookup:
    """The newest journaled event of `kind` whose data holds `fields`, no later than the event at hand
    and other than it; `required`: without it the event cannot be exported; `any_model`: searched among
    every model's events (the event at hand does not name its model); `no_later_than`: a tighter bound
    than the event's own time."""

    kind: type[events.Payload]
    fields: dict[str, Any] = field(default_factory=dict)
    required: bool = True
    any_model: bool = False
    no_later_than: datetime | None = None


def lookups(event: events.Envelope[Any]) -> dict[str, Lookup]:
    """What the steps of `event` need from the journal, by name."""
    d = event.data
    if isinstance(d, events.DataValidated | events.DataRejected):
        return {
            "arrived": Lookup(events.DataArrived, {"uri": d.uri, **lineage.batch_pin(d.etag, d.version_id)})
        }
    if isinstance(d, events.TrainingStarted):
        read = {"uri": d.data_uri, **lineage.batch_pin(d.data_etag, d.data_version_id)}
        return {"arrived": Lookup(events.DataArrived, read, required=False)}
    if isinstance(d, events.TrainingSucceeded | events.TrainingFailed):
        return {"started": Lookup(events.TrainingStarted, {"run_id": d.run_id})}
    if isinstance(d, events.GateDecisionRequested):
        # A merge-request comment names the gate, not the model; a gate id nobody opened (a typo in a
        # comment) is no lineage, and no reason to retry.
        return {"gate": Lookup(events.GateOpened, {"gate_id": d.gate_id}, required=False, any_model=True)}
    if isinstance(d, events.PromotionApproved | events.PromotionRejected) and d.gate_id:
        return {"gate": Lookup(events.GateOpened, {"gate_id": d.gate_id})}
    if isinstance(d, events.RolloutStepCompleted | events.RolloutSucceeded):
        return {"rollout": Lookup(events.RolloutStarted, {"model_version": d.model_version})}
    if isinstance(d, events.RolledBack) and d.from_version:
        version = {"model_version": d.from_version}
        return {
            "rollout": Lookup(events.RolloutStarted, version, required=False),
            "succeeded": Lookup(events.RolloutSucceeded, version, required=False),
            "rolled_back": Lookup(events.RolledBack, {"from_version": d.from_version}, required=False),
        }
    return {}


def follow_ups(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> dict[str, Lookup]:
    """What the steps of `event` need from the journal once `lookups(event)` were found: the end of a
    training run reads the batch its start read (the arrival no later than the start)."""
    started = found.get("started")
    if isinstance(event.data, events.TrainingSucceeded | events.TrainingFailed) and started is not None:
        run = started["data"]
        read = {
            "uri": run["data_uri"],
            **lineage.batch_pin(run.get("data_etag", ""), run.get("data_version_id", "")),
        }
        return {"arrived": Lookup(events.DataArrived, read, required=False, no_later_than=_time(started))}
    return {}


def of_event(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    """The steps `event` records, given what `lookups(event)` found; [] for events outside the chain.
    Raises `Unlinked` when a required link was not found."""
    missing = [name for name, lookup in lookups(event).items() if lookup.required and not found.get(name)]
    if missing:
        raise Unlinked(f"{event.type} {event.id}: the journal holds no {', '.join(missing)} event for it")
    build = _BUILDERS.get(type(event.data))
    return build(event, found) if build is not None else []


# --- datasets ---------------------------------------------------------------------------------------


def batch(uri: str, arrived: Mapping[str, Any] | None = None) -> LineageDataset:
    """A data batch by its URI, pinned to the object version or etag its arrival recorded."""
    a = arrived or {}
    namespace, name = _object_name(uri)
    facts = {k: a[k] for k in ("size", "etag", "version_id", "author") if a.get(k) not in (None, "")}
    version = str(a.get("version_id") or a.get("etag") or "")
    return LineageDataset("data batch", namespace, name, version, uri, facts)


def _batches(uri: str, arrived: Event | None) -> tuple[LineageDataset, ...]:
    """The batch a training run read, when it names one."""
    return (batch(uri, arrived["data"] if arrived else None),) if uri else ()


def model_version(model: str, version: str, **facts: Any) -> LineageDataset:
    uri = f"models:/{model}/{version}"
    return LineageDataset("model version", MODEL_NAMESPACE, uri, version, uri, facts)


def validation_result(uri: str) -> LineageDataset:
    namespace, name = _object_name(uri)
    return LineageDataset("validation result", namespace, name, "", uri)


def _object_name(uri: str) -> tuple[str, str]:
    """OpenLineage's naming for objects: namespace `scheme://bucket`, name the key."""
    parts = urlsplit(uri)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    return "file", uri


# --- steps ------------------------------------------------------------------------------------------


def _step(
    event: events.Envelope[Any],
    job: LineageJob,
    state: LineageState,
    run_key: str,
    *,
    inputs: tuple[LineageDataset, ...] = (),
    outputs: tuple[LineageDataset, ...] = (),
    error: str = "",
    model: str = "",
    **facts: Any,
) -> LineageStep:
    return LineageStep(
        job=job,
        model=model or str(getattr(event.data, "model", None) or event.subject or ""),
        run_key=run_key,
        state=state,
        event_id=event.id,
        event_type=event.type,
        time=event.time,
        inputs=inputs,
        outputs=outputs,
        facts={k: v for k, v in facts.items() if v not in (None, "", [], {})},
        error=error,
    )


def _arrived(event: events.Envelope[Any], _: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.DataArrived = event.data
    return [_step(event, "validation", "START", event.id, inputs=(batch(d.uri, d.model_dump()),))]


def _validated(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.DataValidated | events.DataRejected = event.data
    arrived = _required(found, "arrived")
    checked = d.expectations if isinstance(d, events.DataValidated) else d.failed
    expectations = [x.model_dump(mode="json", include={"expectation", "column", "success"}) for x in checked]
    outputs = (validation_result(d.result_uri),) if d.result_uri else ()
    inputs = (batch(d.uri, arrived["data"]),)
    if isinstance(d, events.DataValidated):
        return [
            _step(
                event,
                "validation",
                "COMPLETE",
                arrived["id"],
                inputs=inputs,
                outputs=outputs,
                suite=d.suite,
                rows=d.rows,
                expectations=expectations,
            )
        ]
    return [
        _step(
            event,
            "validation",
            "FAIL",
            arrived["id"],
            inputs=inputs,
            outputs=outputs,
            error=d.reason,
            suite=d.suite,
            expectations=expectations,
        )
    ]


def _training_started(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.TrainingStarted = event.data
    arrived = found.get("arrived")
    return [
        _step(
            event,
            "training",
            "START",
            event.id,
            inputs=_batches(d.data_uri, arrived),
            **d.model_dump(mode="json", exclude={"model", "data_uri"}),
        )
    ]


def _training_ended(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.TrainingSucceeded | events.TrainingFailed = event.data
    started = _required(found, "started")
    data_uri = str(started["data"]["data_uri"])
    arrived = found.get("arrived")
    inputs = _batches(data_uri, arrived)
    if isinstance(d, events.TrainingFailed):
        return [
            _step(
                event,
                "training",
                "FAIL",
                started["id"],
                inputs=inputs,
                error=d.reason,
                run_id=d.run_id,
                failed_task=d.failed_task,
            )
        ]
    return [
        _step(
            event,
            "training",
            "COMPLETE",
            started["id"],
            inputs=inputs,
            outputs=(model_version(d.model, d.model_version, run_id=d.run_id, metrics=d.metrics),),
            **d.model_dump(mode="json", exclude={"model", "data_uri", "model_version"}),
        )
    ]


def _gate_opened(event: events.Envelope[Any], _: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.GateOpened = event.data
    return [
        _step(
            event,
            "gate",
            "START",
            event.id,
            inputs=(model_version(d.model, d.model_version),),
            gate_id=d.gate_id,
            champion_version=d.champion_version,
            rules={r.name: r.passed for r in d.rules},
            approvals_required=d.approvals_required,
            author=d.author,
            merge_request_url=d.merge_request_url,
        )
    ]


def _decision(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.GateDecisionRequested = event.data
    gate = found.get("gate")
    if gate is None:
        return []
    model = str(gate["data"]["model"])
    return [
        _step(
            event,
            "gate",
            "RUNNING",
            gate["id"],
            model=model,
            inputs=(model_version(model, str(gate["data"]["model_version"])),),
            gate_id=d.gate_id,
            decision=d.decision,
            actor=d.actor,
            via=d.via,
            reason=d.reason,
        )
    ]


def _decided(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.PromotionApproved | events.PromotionRejected = event.data
    gate = found.get("gate")
    inputs = (model_version(d.model, d.model_version),)
    opened = []
    if gate is None:  # no approval asked: the gate began and ended with this decision
        opened = [_step(event, "gate", "START", event.id, inputs=inputs)]
    run_key = gate["id"] if gate is not None else event.id
    rules = {r.name: r.passed for r in d.rules}
    if isinstance(d, events.PromotionApproved):
        ended = _step(
            event, "gate", "COMPLETE", run_key, inputs=inputs, approved_by=d.approved_by, rules=rules
        )
    else:
        ended = _step(
            event,
            "gate",
            "FAIL",
            run_key,
            inputs=inputs,
            error=d.reason,
            rejected_by=d.rejected_by,
            rules=rules,
        )
    return [*opened, ended]


def _rollout_started(event: events.Envelope[Any], _: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.RolloutStarted = event.data
    return [
        _step(
            event,
            "rollout",
            "START",
            event.id,
            inputs=(model_version(d.model, d.model_version),),
            steps=d.steps,
            previous_version=d.previous_version,
        )
    ]


def _rollout_moved(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    d: events.RolloutStepCompleted | events.RolloutSucceeded = event.data
    rollout = _required(found, "rollout")
    inputs = (model_version(d.model, d.model_version),)
    if isinstance(d, events.RolloutStepCompleted):
        return [
            _step(
                event,
                "rollout",
                "RUNNING",
                rollout["id"],
                inputs=inputs,
                traffic_percent=d.traffic_percent,
                analysis=d.analysis,
            )
        ]
    return [
        _step(event, "rollout", "COMPLETE", rollout["id"], inputs=inputs, previous_version=d.previous_version)
    ]


def _rolled_back(event: events.Envelope[Any], found: Mapping[str, Event | None]) -> list[LineageStep]:
    """A rollback is a step of its own (from one version to another); it also fails the rollout of the
    version it leaves when that rollout had not ended yet."""
    d: events.RolledBack = event.data
    result: list[LineageStep] = []
    rollout = found.get("rollout")
    if rollout is not None and d.from_version:
        began = _time(rollout)
        ended = [e for e in (found.get("succeeded"), found.get("rolled_back")) if e and _time(e) >= began]
        if not ended:
            result.append(
                _step(
                    event,
                    "rollout",
                    "FAIL",
                    rollout["id"],
                    inputs=(model_version(d.model, d.from_version),),
                    error=d.reason,
                    figures=d.figures,
                )
            )
    inputs = (model_version(d.model, d.from_version),) if d.from_version else ()
    outputs = (model_version(d.model, d.to_version),) if d.to_version else ()
    facts: dict[str, Any] = {
        "from_version": d.from_version,
        "to_version": d.to_version,
        "reason": d.reason,
        "figures": d.figures,
    }
    states: tuple[LineageState, ...] = ("START", "COMPLETE")
    for state in states:
        result.append(_step(event, "rollback", state, event.id, inputs=inputs, outputs=outputs, **facts))
    return result


def _required(found: Mapping[str, Event | None], name: str) -> Event:
    event = found.get(name)
    if event is None:  # of_event checked every required link first
        raise Unlinked(f"no {name} event")
    return event


def _time(event: Event) -> datetime:
    return datetime.fromisoformat(str(event["time"]))


_BUILDERS: dict[
    type[events.Payload], Callable[[events.Envelope[Any], Mapping[str, Event | None]], list[LineageStep]]
] = {
    events.DataArrived: _arrived,
    events.DataValidated: _validated,
    events.DataRejected: _validated,
    events.TrainingStarted: _training_started,
    events.TrainingSucceeded: _training_ended,
    events.TrainingFailed: _training_ended,
    events.GateOpened: _gate_opened,
    events.GateDecisionRequested: _decision,
    events.PromotionApproved: _decided,
    events.PromotionRejected: _decided,
    events.RolloutStarted: _rollout_started,
    events.RolloutStepCompleted: _rollout_moved,
    events.RolloutSucceeded: _rollout_moved,
    events.RolledBack: _rolled_back,
}
EXPORTED: tuple[type[events.Payload], ...] = tuple(_BUILDERS)
"""The event types the exporter consumes."""
