"""Every event mlcd speaks: the contract between its services.

Payloads are pydantic models named in the past tense; each carries its CloudEvents `type`. An `Envelope`
wraps a payload with the CloudEvents 1.0 attributes. The Kafka binding (binary mode) lives in `encode`
and `decode`; `decode` never raises, it answers a `DecodeError` naming what is wrong.
This module imports nothing of mlcd but `tracing`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlcd import tracing

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
DLQ_TOPIC = "mlcd.dlq"
_NAMESPACE = uuid.UUID("6f2d6c1e-8f7b-4b5e-9a53-2f0c7d9f1a10")


class Payload(BaseModel):
    """Base of every event payload; `type` is the CloudEvents type, its domain names the topic."""

    # NaN and the infinities travel as "NaN"/"Infinity" strings (JSON has no such numbers), so that a NaN
    # metric decodes again instead of arriving as null and sending the event to the DLQ.
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="strings")
    type: ClassVar[str]

    @classmethod
    def topic(cls) -> str:
        return "mlcd." + cls.type.split(".")[1]


# --- git: GitLab webhooks -------------------------------------------------------------------------


class GitUser(BaseModel):
    model_config = ConfigDict(frozen=True)
    username: str
    name: str = ""
    email: str = ""


class CodePushed(Payload):
    """A branch was pushed (or deleted: `after` is all zeros)."""

    type: ClassVar[str] = "mlcd.git.pushed.v1"
    model: str | None = None
    project: str
    project_id: int
    ref: str
    before: str
    after: str
    author: GitUser
    changed_paths: list[str] = Field(default_factory=list)
    paths_complete: bool = True
    branch_deleted: bool = False
    default_branch: str | None = None


class TagPushed(Payload):
    """A tag was pushed."""

    type: ClassVar[str] = "mlcd.git.tag_pushed.v1"
    model: str | None = None
    project: str
    project_id: int
    tag: str
    commit: str
    author: GitUser


class MergeRequestChanged(Payload):
    """A merge request was opened, updated, merged, closed or approved.

    `author` is the GitLab user who did the action (the hook's `user`): for `approved` and `approval`,
    the approver."""

    type: ClassVar[str] = "mlcd.git.merge_request_changed.v1"
    model: str | None = None
    project: str
    project_id: int
    iid: int
    action: str
    title: str = ""
    source_branch: str
    target_branch: str
    commit: str
    author: GitUser
    url: str = ""
    changed_paths: list[str] = Field(default_factory=list)
    paths_complete: bool = Field(False, description="changed_paths is the merge request's whole diff.")


class GitPipelineFinished(Payload):
    """A GitLab CI pipeline changed status (journaled for the timeline; mlcd does not act on it)."""

    type: ClassVar[str] = "mlcd.git.pipeline_status_changed.v1"
    model: str | None = None
    project: str
    project_id: int
    pipeline_id: int
    ref: str
    commit: str
    status: str


# --- ingest: deliveries mlcd journals but does not act on ------------------------------------------


class DeliveryIgnored(Payload):
    """An authenticated delivery of a kind mlcd does not act on, or concerning no model."""

    type: ClassVar[str] = "mlcd.ingest.delivery_ignored.v1"
    model: str | None = None
    source: Literal["gitlab", "minio", "alertmanager", "mlflow"]
    kind: str
    reason: str


# --- data -----------------------------------------------------------------------------------------


class DataArrived(Payload):
    """A data batch landed under a model's landing prefix (MinIO `s3:ObjectCreated:*`)."""

    type: ClassVar[str] = "mlcd.data.arrived.v1"
    model: str
    bucket: str
    key: str
    uri: str
    size: int
    etag: str = ""
    version_id: str = ""
    author: str = Field("", description="Who uploaded the batch: MinIO's userIdentity.principalId.")


class ExpectationResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    expectation: str
    column: str | None = None
    success: bool
    observed: Any = None
    details: str = ""


class DataValidated(Payload):
    """A batch passed the model's Great Expectations suite; it may be trained on."""

    type: ClassVar[str] = "mlcd.data.validated.v1"
    model: str
    uri: str
    rows: int
    suite: str
    result_uri: str
    expectations: list[ExpectationResult] = Field(default_factory=list)
    author: str = Field("", description="Who uploaded the batch (from DataArrived).")
    etag: str = Field("", description="The ETag the batch arrived with (DataArrived): the bytes validated.")
    version_id: str = Field(
        "", description="The object version the batch arrived as (versioned buckets): the bytes validated."
    )


class DataRejected(Payload):
    """A batch failed validation (or was empty, unreadable or too large); it is never trained on."""

    type: ClassVar[str] = "mlcd.data.rejected.v1"
    model: str
    uri: str
    reason: str
    suite: str = ""
    result_uri: str = ""
    failed: list[ExpectationResult] = Field(default_factory=list)
    etag: str = Field("", description="The ETag the batch arrived with (DataArrived).")
    version_id: str = Field("", description="The object version the batch arrived as (versioned buckets).")


# --- features -------------------------------------------------------------------------------------


class FeaturesApplied(Payload):
    """`feast apply` registered a model's feature repository, as pushed to the policy's branch."""

    type: ClassVar[str] = "mlcd.features.applied.v1"
    model: str
    project: str = Field(description="The GitLab project holding the feature repository.")
    commit: str
    path: str = Field(description="The feature repository's folder in the project.")
    feast_project: str = Field(description="The Feast project (feature_store.yaml `project`).")
    registry: str = Field(description="The registry applied to (a URL's password left out).")
    changes: list[str] = Field(
        default_factory=list, description="What Feast reported: 'Created feature view wine_chemistry', ..."
    )
    author: str = Field("", description="GitLab username of who pushed the commit.")


# --- training -------------------------------------------------------------------------------------


class PipelinePublished(Payload):
    """A pipeline was compiled and uploaded as a new version named after the commit."""

    type: ClassVar[str] = "mlcd.training.pipeline_published.v1"
    model: str
    pipeline: str
    version: str
    commit: str
    package_uri: str
    pipeline_id: str = ""
    version_id: str = ""
    author: str = Field("", description="GitLab username of who pushed the commit.")


class PipelineBuildFailed(Payload):
    """A pipeline did not compile at a pushed commit."""

    type: ClassVar[str] = "mlcd.training.pipeline_build_failed.v1"
    model: str
    pipeline: str
    commit: str
    error: str


class RetrainRequested(Payload):
    """Retraining was asked for (a monitoring policy, or a person)."""

    type: ClassVar[str] = "mlcd.training.retrain_requested.v1"
    model: str
    reason: str
    data_uri: str | None = None
    requested_by: str = Field("", description="The person who asked (empty: a monitoring policy).")


class TrainingStarted(Payload):
    """A training run was submitted; its name derives from the triggering event."""

    type: ClassVar[str] = "mlcd.training.started.v1"
    model: str
    run_id: str
    run_name: str
    pipeline_version: str
    data_uri: str
    trigger_event_id: str
    author: str = Field("", description="Who caused the trigger: pusher, uploader or requester.")
    tuning_experiment: str = Field("", description="The tuning experiment whose best trial set parameters.")
    tuned_parameters: dict[str, Any] = Field(
        default_factory=dict, description="The best trial's parameters the run was started with."
    )
    data_etag: str = Field(
        "",
        description="The batch's ETag the run reads, as validated; empty with data_version_id: the latest.",
    )
    data_version_id: str = Field("", description="The batch's object version the run reads, as validated.")


class TrainingSucceeded(Payload):
    """A training run finished and registered a model version with its metrics."""

    type: ClassVar[str] = "mlcd.training.succeeded.v1"
    model: str
    run_id: str
    model_version: str
    metrics: dict[str, float]
    data_uri: str
    pipeline_version: str = ""
    commit: str = ""
    author: str = Field("", description="Who caused the trigger: pusher, uploader or requester.")
    tuning_experiment: str = Field("", description="Katib Experiment (or Optuna study) that tuned the run.")
    tuning_best_trial: str = Field("", description="The experiment's best trial.")
    tuning_objective_value: float | None = Field(None, description="The best trial's objective value.")
    tuned_parameters: dict[str, Any] = Field(
        default_factory=dict, description="The best trial's parameters, which trained this version."
    )


class TrainingFailed(Payload):
    """A training run failed; the failing task and its log tail say why."""

    type: ClassVar[str] = "mlcd.training.failed.v1"
    model: str
    run_id: str
    reason: str
    failed_task: str = ""
    log_tail: str = ""


class CandidateRegistered(Payload):
    """A model version was registered in MLflow outside mlcd (MLflow registry webhook)."""

    type: ClassVar[str] = "mlcd.training.candidate_registered.v1"
    model: str
    model_version: str
    run_id: str | None = None
    source: str = ""


# --- promotion ------------------------------------------------------------------------------------


class RuleOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    expression: str
    passed: bool
    values: dict[str, Any] = Field(default_factory=dict)
    error: str = ""


class GateOpened(Payload):
    """A candidate passed its rules and waits for an on-call decision."""

    type: ClassVar[str] = "mlcd.promotion.gate_opened.v1"
    model: str
    gate_id: str
    model_version: str
    champion_version: str | None = None
    rules: list[RuleOutcome]
    approvals_required: int
    approver_groups: list[str]
    expires_at: datetime
    author: str = Field("", description="Who caused the training; may not approve it.")
    merge_request_url: str = Field("", description="The merge request that changed the pipeline, if any.")


class GateDecisionRequested(Payload):
    """An on-call engineer asked to approve or reject a gate (e.g. a `/mlcd approve` MR comment)."""

    type: ClassVar[str] = "mlcd.promotion.decision_requested.v1"
    model: str | None = None
    gate_id: str
    decision: Literal["approve", "reject"]
    actor: str
    via: Literal["cli", "api", "gitlab", "ui"]
    reason: str = ""
    project: str = ""
    merge_request_iid: int | None = None


class PromotionApproved(Payload):
    """A candidate may be rolled out (rules passed, and approved where the policy asks)."""

    type: ClassVar[str] = "mlcd.promotion.approved.v1"
    model: str
    model_version: str
    gate_id: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    rules: list[RuleOutcome] = Field(default_factory=list)


class PromotionRejected(Payload):
    """A candidate will not be rolled out: a rule failed, a person rejected it, or its gate expired."""

    type: ClassVar[str] = "mlcd.promotion.rejected.v1"
    model: str
    model_version: str
    reason: str
    gate_id: str | None = None
    rules: list[RuleOutcome] = Field(default_factory=list)
    rejected_by: str | None = None


# --- serving --------------------------------------------------------------------------------------


class RolloutStarted(Payload):
    """A canary rollout of a model version began."""

    type: ClassVar[str] = "mlcd.serving.rollout_started.v1"
    model: str
    model_version: str
    previous_version: str | None = None
    steps: list[int]


class RolloutStepCompleted(Payload):
    """A canary step passed its analysis and traffic moved on."""

    type: ClassVar[str] = "mlcd.serving.rollout_step_completed.v1"
    model: str
    model_version: str
    traffic_percent: int
    analysis: dict[str, float] = Field(default_factory=dict)


class RolloutSucceeded(Payload):
    """The new version takes all traffic and is the champion."""

    type: ClassVar[str] = "mlcd.serving.rollout_succeeded.v1"
    model: str
    model_version: str
    previous_version: str | None = None


class RolloutPaused(Payload):
    """A canary rollout stopped moving and waits for on-call: its analysis stayed inconclusive past the
    policy's `progress_deadline` with `on_inconclusive: pause`, or on-call paused it (`rollout pause`)."""

    type: ClassVar[str] = "mlcd.serving.rollout_paused.v1"
    model: str
    model_version: str
    traffic_percent: int
    reason: str
    figures: dict[str, float] = Field(default_factory=dict)


class RolloutResumed(Payload):
    """On-call resumed a paused canary rollout (`mlcd rollout resume`): analysis goes on from this step."""

    type: ClassVar[str] = "mlcd.serving.rollout_resumed.v1"
    model: str
    model_version: str
    traffic_percent: int
    resumed_by: str


class RollbackRequested(Payload):
    """Serving should go back to the previous revision (drift policy, failed analysis, a person)."""

    type: ClassVar[str] = "mlcd.serving.rollback_requested.v1"
    model: str
    reason: str
    requested_by: str
    to_version: str | None = None


class RolledBack(Payload):
    """Traffic is back on the previous revision; the reason and failing figures say why."""

    type: ClassVar[str] = "mlcd.serving.rolled_back.v1"
    model: str
    from_version: str | None
    to_version: str | None
    reason: str
    figures: dict[str, float] = Field(default_factory=dict)


# --- monitoring -----------------------------------------------------------------------------------


class AlertFired(Payload):
    """Model monitoring reported a firing alert (drift, SLO) for a model."""

    type: ClassVar[str] = "mlcd.monitoring.alert_fired.v1"
    model: str
    alert: str
    severity: str
    fingerprint: str
    starts_at: datetime
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AlertResolved(Payload):
    """A monitoring alert for a model resolved."""

    type: ClassVar[str] = "mlcd.monitoring.alert_resolved.v1"
    model: str
    alert: str
    fingerprint: str
    starts_at: datetime
    ends_at: datetime | None = None


class NoticeRaised(Payload):
    """Something an engineer should read; no automatic action was taken."""

    type: ClassVar[str] = "mlcd.monitoring.notice_raised.v1"
    model: str
    message: str
    cause_event_id: str = ""


PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.type: cls
    for cls in (
        CodePushed,
        TagPushed,
        MergeRequestChanged,
        GitPipelineFinished,
        DeliveryIgnored,
        DataArrived,
        DataValidated,
        DataRejected,
        FeaturesApplied,
        PipelinePublished,
        PipelineBuildFailed,
        RetrainRequested,
        TrainingStarted,
        TrainingSucceeded,
        TrainingFailed,
        CandidateRegistered,
        GateOpened,
        GateDecisionRequested,
        PromotionApproved,
        PromotionRejected,
        RolloutStarted,
        RolloutStepCompleted,
        RolloutSucceeded,
        RolloutPaused,
        RolloutResumed,
        RollbackRequested,
        RolledBack,
        AlertFired,
        AlertResolved,
        NoticeRaised,
    )
}
TOPICS: tuple[str, ...] = (*sorted({cls.topic() for cls in PAYLOAD_TYPES.values()}), DLQ_TOPIC)

P = TypeVar("P", bound=Payload)


class Envelope(BaseModel, Generic[P]):
    """A CloudEvents 1.0 event: attributes plus the payload as `data`."""

    model_config = ConfigDict(frozen=True)
    specversion: str = SPECVERSION
    id: str
    source: str
    type: str
    subject: str | None = None
    time: datetime
    data: P
    correlationid: str | None = Field(
        None, description="Extension attribute: the id of the event that began this event's chain."
    )

    @property
    def correlation(self) -> str:
        """The chain this event belongs to (an event from before correlation ids began its own)."""
        return self.correlationid or self.id

    @property
    def traceparent(self) -> str:
        """W3C trace context (the CloudEvents distributed-tracing extension): this event in its chain."""
        return tracing.traceparent(self.correlation, self.id)

    @property
    def key(self) -> str:
        """The partition key: the model, else the subject (a project path for git events)."""
        return str(getattr(self.data, "model", None) or self.subject or self.id)

    def structured(self) -> dict[str, Any]:
        """The structured-mode CloudEvents JSON object."""
        return {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat(),
            "correlationid": self.correlation,
            "traceparent": self.traceparent,
            "datacontenttype": CONTENT_TYPE,
            "data": self.data.model_dump(mode="json"),
        }


def event_id(*identity: str) -> str:
    """A deterministic event id from a source's own identity (redelivery yields the same id)."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(identity)))


def derived_id(cause_id: str, payload_type: str, *extra: str) -> str:
    """The id of an event a handler emits because of `cause_id`: stable across handler retries."""
    return event_id("derived", cause_id, payload_type, *extra)


def new_event(
    data: P,
    *,
    source: str,
    id: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
    correlationid: str | None = None,
) -> Envelope[P]:
    """An event; with no `correlationid` it begins a chain of its own."""
    model = getattr(data, "model", None)
    id = id or str(uuid.uuid4())
    return Envelope(  # unsubscripted: the same class as Envelope[P], without the subscript's ~9 µs lookup
        id=id,
        source=source,
        type=data.type,
        subject=subject or model,
        time=time or datetime.now(UTC),
        data=data,
        correlationid=correlationid or id,
    )


# --- Kafka binding, binary mode -------------------------------------------------------------------


Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """One Kafka record as mlcd sees it, whichever bus carried it."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    partition: int = 0
    offset: int = -1
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        for key, raw in self.headers:
            if key == name:
                return raw.decode("utf-8", "replace")
        return None


@dataclass(frozen=True)
class DecodeError:
    """Why a record is not an mlcd event; the runtime dead-letters it at once."""

    reason: str
    record: Record = field(repr=False)


def encode(envelope: Envelope[Any]) -> Record:
    headers: list[tuple[str, bytes]] = [
        ("ce_specversion", envelope.specversion.encode()),
        ("ce_id", envelope.id.encode()),
        ("ce_source", envelope.source.encode()),
        ("ce_type", envelope.type.encode()),
        ("ce_time", envelope.time.isoformat().encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if envelope.subject is not None:
        headers.append(("ce_subject", envelope.subject.encode()))
    headers.append(("ce_correlationid", envelope.correlation.encode()))
    headers.append(("ce_traceparent", envelope.traceparent.encode()))
    return Record(
        topic=type(envelope.data).topic(),
        key=envelope.key.encode(),
        value=envelope.data.model_dump_json().encode(),
        headers=tuple(headers),
    )


_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")


_ENVELOPE = Envelope[Payload]  # looked up once: each subscript is a cache lookup in pydantic


def decode(record: Record) -> Envelope[Payload] | DecodeError:
    headers: dict[str, str] = {}
    for name, raw in record.headers:  # the first of a repeated header counts, as in Record.header
        if name not in headers:
            headers[name] = raw.decode("utf-8", "replace")
    missing = [name for name in _REQUIRED if name not in headers]
    if missing:
        return DecodeError(f"missing CloudEvents headers: {', '.join(missing)}", record)
    if headers["ce_specversion"] != SPECVERSION:
        return DecodeError(f"unsupported specversion {headers['ce_specversion']!r}", record)
    type_name = headers["ce_type"]
    payload_type = PAYLOAD_TYPES.get(type_name)
    if payload_type is None:
        return DecodeError(f"unknown event type {type_name!r}", record)
    try:
        data = payload_type.model_validate_json(record.value)
        time = datetime.fromisoformat(headers["ce_time"])
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in e.errors()
        )
        return DecodeError(f"invalid {type_name} payload: {problems}", record)
    except ValueError as e:
        return DecodeError(f"invalid ce_time: {e}", record)
    return _ENVELOPE(
        id=headers["ce_id"],
        source=headers["ce_source"],
        type=type_name,
        subject=headers.get("ce_subject"),
        time=time,
        data=data,
        correlationid=headers.get("ce_correlationid"),
    )


# --- JSON Schemas ---------------------------------------------------------------------------------


def json_schemas() -> dict[str, str]:
    """File name → JSON Schema text for every payload type (what `docs/events/` holds)."""
    schemas: dict[str, str] = {}
    for type_name, cls in sorted(PAYLOAD_TYPES.items()):
        schema = cls.model_json_schema()
        schema["$id"] = f"https://mlcd.dev/events/{type_name}.json"
        schema["x-cloudevents-type"] = type_name
        schema["x-kafka-topic"] = cls.topic()
        schemas[f"{type_name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return schemas


def reference() -> str:
    """The events reference page (`docs/events/README.md`): every type, its topic and what it means."""
    lines = [
        "# Events reference",
        "",
        "Generated from `services/mlcd/events.py` by `python -m mlcd.events`; a test keeps it in step.",
        "Every event is a CloudEvents 1.0 event. On Kafka it travels in binary mode: `ce_*` headers, the",
        "payload JSON as the value, the model (else the project path) as the key. One topic per domain;",
        f"what cannot be handled is parked on `{DLQ_TOPIC}`.",
        "",
        "Two extension attributes ride on every event (`ce_correlationid`, `ce_traceparent` on Kafka):",
        "`correlationid` is the id of the event that began its chain (a webhook delivery, a data arrival, an",
        "on-call request), inherited by every event emitted because of it, and by the decisions and rollout",
        "steps taken later on that chain's gate or rollout; `traceparent` is W3C trace context (CloudEvents'",
        "distributed-tracing extension) whose trace id is the correlation id's hex. Calls mlcd makes to",
        "outside systems while it handles an event carry the same `traceparent` header.",
        "",
        "| type | topic | meaning | schema |",
        "|---|---|---|---|",
    ]
    for type_name, cls in sorted(PAYLOAD_TYPES.items()):
        meaning = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__
        lines.append(
            f"| `{type_name}` | `{cls.topic()}` | {meaning} | [{type_name}.json]({type_name}.json) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import pathlib

    target = pathlib.Path(__file__).resolve().parents[2] / "docs" / "events"
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("mlcd.*.json"):
        stale.unlink()
    for name, text in json_schemas().items():
        (target / name).write_text(text)
    (target / "README.md").write_text(reference())
    print(f"wrote {len(PAYLOAD_TYPES)} schemas to {target}")
