"""Every event mlcd speaks: the contract between its services.

Payloads are pydantic models named in the past tense; each carries its CloudEvents `type`. An `Envelope`
wraps a payload with the CloudEvents 1.0 attributes. The Kafka binding (binary mode) lives in `encode`
and `decode`; `decode` never raises, it answers a `DecodeError` naming what is wrong.
This module imports nothing of mlcd.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    """A merge request was opened, updated, merged, closed or approved."""

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


class DataRejected(Payload):
    """A batch failed validation (or was empty, unreadable or too large); it is never trained on."""

    type: ClassVar[str] = "mlcd.data.rejected.v1"
    model: str
    uri: str
    reason: str
    suite: str = ""
    result_uri: str = ""
    failed: list[ExpectationResult] = Field(default_factory=list)


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


class TrainingStarted(Payload):
    """A training run was submitted; its name derives from the triggering event."""

    type: ClassVar[str] = "mlcd.training.started.v1"
    model: str
    run_id: str
    run_name: str
    pipeline_version: str
    data_uri: str
    trigger_event_id: str


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
    author: str = ""


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
) -> Envelope[P]:
    model = getattr(data, "model", None)
    return Envelope[P](
        id=id or str(uuid.uuid4()),
        source=source,
        type=data.type,
        subject=subject or model,
        time=time or datetime.now(UTC),
        data=data,
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
    return Record(
        topic=type(envelope.data).topic(),
        key=envelope.key.encode(),
        value=envelope.data.model_dump_json().encode(),
        headers=tuple(headers),
    )


_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")


def decode(record: Record) -> Envelope[Payload] | DecodeError:
    missing = [name for name in _REQUIRED if record.header(name) is None]
    if missing:
        return DecodeError(f"missing CloudEvents headers: {', '.join(missing)}", record)
    if record.header("ce_specversion") != SPECVERSION:
        return DecodeError(f"unsupported specversion {record.header('ce_specversion')!r}", record)
    type_name = record.header("ce_type") or ""
    payload_type = PAYLOAD_TYPES.get(type_name)
    if payload_type is None:
        return DecodeError(f"unknown event type {type_name!r}", record)
    try:
        data = payload_type.model_validate_json(record.value)
        time = datetime.fromisoformat(record.header("ce_time") or "")
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in e.errors()
        )
        return DecodeError(f"invalid {type_name} payload: {problems}", record)
    except ValueError as e:
        return DecodeError(f"invalid ce_time: {e}", record)
    return Envelope[Payload](
        id=record.header("ce_id") or "",
        source=record.header("ce_source") or "",
        type=type_name,
        subject=record.header("ce_subject"),
        time=time,
        data=data,
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
