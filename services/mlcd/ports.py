"""The ports: what handlers need from outside systems, as small protocols.

Each adapter module under `mlcd.adapters` implements one port for one system; the composition root
(`mlcd.bootstrap`) picks the adapter from the settings. Every method may raise `TemporaryError`
(retry) or `PermanentError` (dead-letter); none leaks a vendor exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mlcd.policy import analysis
    from mlcd.policy.schema import Check, Tuning

# --- model registry (MLflow) ----------------------------------------------------------------------


PYFUNC = "python_function"  # the MLflow flavor every generic model server (MLServer, mlflow) loads

# The `flavors` section of a version's MLmodel file: flavor name → its settings (which file holds the
# model, how it was serialized); empty when the file could not be read and the flavors are unknown.
Flavors = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    run_id: str | None
    source: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # Where the version's files are in the artifact store (s3://…), which a model server can download;
    # `source` may be a registry reference (MLflow 3: models:/m-…) that only MLflow resolves.
    artifact_uri: str = ""

    @property
    def serving_uri(self) -> str:
        """Where a serving platform downloads the version from: the artifact store's URI, not `models:/`."""
        return self.artifact_uri or self.source


class Registry(Protocol):
    async def get_version(self, model: str, version: str) -> ModelVersion:
        """The version with its run's metrics, params and tags; NotFound if absent."""
        ...

    async def version_by_alias(self, model: str, alias: str) -> ModelVersion | None: ...

    async def flavors(self, version: ModelVersion) -> Flavors:
        """The flavors in the version's MLmodel file (python_function, sklearn, …) with their settings;
        empty when it cannot be read, and they are unknown."""
        ...

    async def version_by_tag(self, model: str, key: str, value: str) -> ModelVersion | None:
        """The newest version tagged `key` = `value`, or None."""
        ...

    async def set_alias(self, model: str, alias: str, version: str) -> None: ...

    async def delete_alias(self, model: str, alias: str) -> None: ...

    async def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None: ...

    async def ping(self) -> None: ...


# --- object store (MinIO / S3, or a folder) -------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int
    etag: str = ""
    version_id: str = ""


class ObjectStore(Protocol):
    async def stat(self, bucket: str, key: str) -> StoredObject: ...

    async def get(
        self, bucket: str, key: str, max_bytes: int, *, etag: str = "", version_id: str = ""
    ) -> bytes:
        """The object's bytes; PermanentError if it is larger than `max_bytes`.

        Pinned: with `version_id`, that version's bytes; with `etag`, the bytes only while the object still
        has that ETag. ObjectChanged when they are no longer there (overwritten, version deleted).
        """
        ...

    async def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Store and return the object's URI."""
        ...

    def uri(self, bucket: str, key: str) -> str: ...

    async def ping(self) -> None: ...


# --- code host (GitLab) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeRequestRef:
    """A merge request as the code host names it: `iid` within its project, its page, who opened it."""

    iid: int
    url: str
    author: str
    state: str  # opened, merged, closed
    target_branch: str = ""


class CodeHost(Protocol):
    async def set_commit_status(
        self, project: str, sha: str, state: str, *, name: str, description: str = "", target_url: str = ""
    ) -> None:
        """state: pending, running, success, failed or canceled."""
        ...

    async def upsert_merge_request_note(self, project: str, iid: int, marker: str, body: str) -> None:
        """Post a note, or edit the one that carries `marker`, so reruns do not pile up notes."""
        ...

    async def post_commit_note(self, project: str, sha: str, marker: str, body: str) -> None:
        """Comment on a commit once: a comment carrying `marker` already there is not posted again."""
        ...

    async def open_issue(self, project: str, marker: str, title: str, body: str) -> str:
        """Open an issue once per `marker` (hidden in its description); its web URL."""
        ...

    async def fetch_tree(self, project: str, ref: str, path: str, target: Path) -> Path:
        """Download the files under `path` at `ref` into `target`; returns the local folder."""
        ...

    async def access_level(self, project: str, username: str) -> int:
        """The user's access level on the project (GitLab: 40 = Maintainer); 0 if not a member."""
        ...

    async def merge_requests_of_commit(self, project: str, sha: str) -> list[MergeRequestRef]:
        """The merge requests that brought `sha` into the project (merged first); [] when none did."""
        ...

    async def merge_request_paths(self, project: str, iid: int) -> list[str] | None:
        """Every path the merge request changes (old and new path of a rename); None when the code host
        cannot tell (no GitLab configured)."""
        ...

    async def merge_request_approvers(self, project: str, iid: int) -> list[str]:
        """Usernames of the people who approve the merge request now."""
        ...

    async def ping(self) -> None: ...


# --- orchestrator (Kubeflow Pipelines, or kfp.local) ----------------------------------------------


@dataclass(frozen=True)
class PipelineRef:
    pipeline: str
    version: str
    pipeline_id: str = ""
    version_id: str = ""
    package_uri: str = ""


@dataclass(frozen=True)
class Run:
    run_id: str
    name: str
    state: str  # PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED
    outputs: dict[str, Any] = field(default_factory=dict)
    failed_task: str = ""
    log_tail: str = ""

    @property
    def finished(self) -> bool:
        return self.state in {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}


class Orchestrator(Protocol):
    async def publish(self, pipeline: str, version: str, package: Path) -> PipelineRef:
        """Upload a compiled package as a pipeline version (idempotent on the version name)."""
        ...

    async def latest(self, pipeline: str) -> PipelineRef | None: ...

    async def find_run(self, name: str) -> Run | None: ...

    async def submit(self, name: str, pipeline: PipelineRef, parameters: dict[str, Any]) -> Run:
        """Start a run named `name`; callers look it up with `find_run` first."""
        ...

    async def get_run(self, run_id: str) -> Run: ...

    async def terminate_run(self, run_id: str) -> None:
        """Stop a run that outlived its policy's `training.timeout` (a finished run is left alone)."""
        ...

    async def ping(self) -> None: ...


# --- training jobs (Training Operator) and tuning (Katib, or Optuna) -------------------------------


class TrainingJobs(Protocol):
    """Training Operator jobs (TrainJob, PyTorchJob, TFJob, XGBoostJob) as runs: `Run.run_id` is
    `<plural>/<name>`; outputs stay empty (the job registers its version in MLflow with the run-name tag)."""

    async def submit_job(self, name: str, template: dict[str, Any], parameters: dict[str, Any]) -> Run:
        """Create the job named `name` from the policy's `template` with `parameters` filled in; an
        existing job of that name is returned as it is."""
        ...

    async def get_run(self, run_id: str) -> Run: ...

    async def terminate_run(self, run_id: str) -> None:
        """Delete the job (its pods go with it)."""
        ...


@dataclass(frozen=True)
class TuningRequest:
    """One experiment: the search (the policy's `training.tuning`) and how each trial trains."""

    name: str
    model: str
    pipeline: PipelineRef
    parameters: dict[str, Any]  # every trial's parameters before the searched ones are set
    tuning: Tuning


@dataclass(frozen=True)
class TuningResult:
    name: str
    state: str  # RUNNING, SUCCEEDED, FAILED
    best_trial: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # the best trial's assignments, typed
    objective_value: float | None = None
    trials: int = 0
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state in {"SUCCEEDED", "FAILED"}


class Tuner(Protocol):
    async def start(self, request: TuningRequest) -> TuningResult:
        """Start the experiment named `request.name`; an existing one of that name is returned as it is."""
        ...

    async def result(self, name: str) -> TuningResult | None:
        """Where the experiment stands; None when there is none of that name."""
        ...

    async def cancel(self, name: str) -> None:
        """Stop and delete the experiment and its trials (nothing happens when it is gone)."""
        ...


# --- serving (KServe, or local serving) -----------------------------------------------------------


@dataclass(frozen=True)
class ServingState:
    model: str
    stable_version: str | None
    canary_version: str | None
    canary_percent: int
    ready: bool
    message: str = ""
    # What the platform reports serving, as opposed to the spec mlcd wrote: the canary's share of the
    # traffic (None: the platform applies a split at once, so canary_percent is what serves), the
    # storage URI of each revision, and the split by revision for people to read.
    observed_percent: int | None = None
    stable_uri: str = ""
    canary_uri: str = ""
    traffic: dict[str, int] = field(default_factory=dict)
    canary_revision: str = ""  # the platform's name of the canary's revision, for analysis queries
    stable_revision: str = ""
    platform: str = "local"  # which analysis templates apply: local, serverless or raw (KServe), seldon
    namespace: str = ""
    service: str = ""

    @property
    def serving_percent(self) -> int:
        """The canary's share of the traffic as observed."""
        return self.canary_percent if self.observed_percent is None else self.observed_percent


class Serving(Protocol):
    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        """Why the platform cannot serve this version (where its files are; its MLmodel `flavors`, empty
        when unknown); None when it can."""
        ...

    async def state(self, model: str) -> ServingState: ...

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None: ...

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        """All traffic to `version`; it becomes the stable revision."""
        ...

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        """All traffic back to `version` (the previous stable revision); the canary is dropped."""
        ...

    async def ping(self) -> None: ...


class Analysis(Protocol):
    async def measure(self, model: str, version: str, window_s: float) -> dict[str, float]:
        """Figures of the revision over the window: error_rate, p95_latency_s, requests."""
        ...

    async def evaluate(
        self, checks: list[Check], platform: analysis.Platform, target: analysis.Target
    ) -> list[analysis.Outcome]:
        """Each check's value and verdict for the target revision; no data is inconclusive."""
        ...


# --- notices --------------------------------------------------------------------------------------


class Notifier(Protocol):
    async def notify(self, model: str, title: str, body: str) -> None: ...


# --- lineage export (OpenLineage, ML Metadata) ----------------------------------------------------

LineageState = Literal["START", "RUNNING", "COMPLETE", "FAIL"]
LineageJob = Literal["validation", "training", "gate", "rollout", "rollback"]


@dataclass(frozen=True)
class LineageDataset:
    """A data batch, a validation result or a model version as a lineage store names it."""

    kind: Literal["data batch", "validation result", "model version"]
    namespace: str  # s3://bucket for objects (OpenLineage's naming), mlflow for model versions
    name: str  # the object key, or models:/MODEL/VERSION
    version: str = ""  # the object's version id or etag, the model version
    uri: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageStep:
    """One state change of one run of a step of the chain (validation, training, gate, rollout,
    rollback). `run_key` is the id of the event that began the run: every state of one run shares it,
    and a redelivered event yields the same step."""

    job: LineageJob
    model: str
    run_key: str
    state: LineageState
    event_id: str
    event_type: str
    time: datetime
    inputs: tuple[LineageDataset, ...] = ()
    outputs: tuple[LineageDataset, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class LineageExport(Protocol):
    """A lineage store the chain's steps are written to; writing the same step twice changes nothing."""

    name: str

    async def export(self, steps: list[LineageStep]) -> None: ...

    async def close(self) -> None:
        """Release the connection or child process the store keeps between exports."""
        ...
