"""The shape of a policy file: one model's code, data, training, promotion, rollout and monitoring.

`policies/defaults.yaml` supplies what a model's file leaves out. Unknown fields are errors, so a typo
never silently weakens a rule.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fnmatch import fnmatch
from itertools import pairwise
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """'30s', '10m', '24h', '1d', '250ms', or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        seconds: float = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 24h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return timedelta(seconds=float(seconds))
    except (OverflowError, ValueError):  # infinity, NaN, or beyond timedelta (2.7 million years)
        raise ValueError(f"not a usable duration: {value!r}") from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSource(_Strict):
    project: str = Field(description="GitLab project path, e.g. ml/wine-quality.")
    paths: list[str] = Field(default_factory=lambda: ["**"], description="Globs of the watched paths.")
    branch: str = Field("main", description="Branch whose pushes rebuild and publish the pipeline.")

    def watches(self, path: str) -> bool:
        return any(fnmatch(path, pattern) for pattern in self.paths)


class DataSource(_Strict):
    bucket: str
    prefix: str = ""
    suite: str = Field(description="Great Expectations suite (JSON), relative to the repository root.")
    max_bytes: int = Field(50 * 1024 * 1024, description="Larger batches are rejected unread.")
    results_prefix: str = Field("_validation/", description="Where validation results are stored.")

    def covers(self, bucket: str, key: str) -> bool:
        return (
            bucket == self.bucket
            and key.startswith(self.prefix)
            and not key.startswith(self.prefix + self.results_prefix)
        )


TuningAlgorithm = Literal["random", "grid", "tpe", "multivariate-tpe", "cmaes", "bayesianoptimization"]
JOB_KINDS = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"),
    ("kubeflow.org/v1", "PyTorchJob"),
    ("kubeflow.org/v1", "TFJob"),
    ("kubeflow.org/v1", "XGBoostJob"),
}


class SearchParameter(_Strict):
    """One dimension of a tuning search space, as Katib's `spec.parameters[]` names it."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The training parameter it sets.")
    type: Literal["int", "double", "categorical", "discrete"]
    min: float | None = None
    max: float | None = None
    step: float | None = Field(None, gt=0)
    values: list[str | int | float] | None = Field(None, description="categorical and discrete only.")

    @model_validator(mode="after")
    def _a_space(self) -> SearchParameter:
        if self.type in ("int", "double"):
            if self.min is None or self.max is None or self.min > self.max or self.values is not None:
                raise ValueError(f"parameter {self.name!r}: an {self.type} needs min <= max and no values")
            if self.type == "int" and not all(float(v).is_integer() for v in (self.min, self.max)):
                raise ValueError(f"parameter {self.name!r}: an int's min and max are whole numbers")
        elif not self.values or self.min is not None or self.max is not None:
            raise ValueError(f"parameter {self.name!r}: a {self.type} lists its values (no min or max)")
        elif self.type == "discrete" and not all(isinstance(v, int | float) for v in self.values):
            raise ValueError(f"parameter {self.name!r}: discrete values are numbers")
        return self


class Objective(_Strict):
    metric: str = Field(description="The run's metric to optimise, e.g. accuracy (from its metrics output).")
    type: Literal["maximize", "minimize"] = "maximize"
    goal: float | None = Field(None, description="Stop once a trial reaches it; unset: run every trial.")
    additional_metrics: list[str] = Field(default_factory=list, description="Also recorded per trial.")


class Tuning(_Strict):
    """Hyperparameter tuning before a retrain: a Katib Experiment, or Optuna on the embedded default."""

    objective: Objective
    algorithm: TuningAlgorithm = "tpe"
    parameters: list[SearchParameter] = Field(min_length=1)
    max_trials: int = Field(12, ge=1, description="Trials in all (Katib maxTrialCount).")
    parallel_trials: int = Field(2, ge=1, description="Trials at a time (Katib parallelTrialCount).")
    max_failed_trials: int = Field(3, ge=0, description="More failed trials fail the tuning.")
    when: Literal["always", "every_nth", "after_rule_miss"] = Field(
        "always",
        description="always: every retrain is tuned; every_nth: the model's 1st, (n+1)th, ... run; "
        "after_rule_miss: when the model's last candidate failed a promotion rule (and its first run).",
    )
    every: int = Field(1, ge=1, description="n of when: every_nth.")
    timeout: Duration = Field(timedelta(hours=6), description="Past it the experiment is deleted.")
    warm_start: bool = Field(
        True,
        description="Embedded (Optuna) only: the previous experiment's best trials are tried first "
        "(Katib has no warm start, kubeflow/katib#1067).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Tuning:
        names = [p.name for p in self.parameters]
        if len(names) != len(set(names)):
            raise ValueError("tuning parameter names must be unique")
        if self.parallel_trials > self.max_trials:
            raise ValueError("parallel_trials cannot exceed max_trials")
        if self.algorithm == "grid" and any(p.type == "double" and p.step is None for p in self.parameters):
            raise ValueError("a grid search needs a step on every double parameter")
        return self


class Training(_Strict):
    backend: Literal["pipeline", "job"] = Field(
        "pipeline", description="pipeline: a KFP run of `pipeline`; job: a Training Operator `job`."
    )
    pipeline: str = Field("", description="Folder under pipelines/ holding the KFP pipeline.")
    job: dict[str, Any] | None = Field(
        None,
        description="backend job: the manifest template (TrainJob trainer.kubeflow.org/v1alpha1, or "
        "PyTorchJob, TFJob, XGBoostJob kubeflow.org/v1); ${parameters.NAME} in its strings is replaced by "
        "the run's parameters (data_uri, run_name, mlflow_tracking_uri, ...); mlcd names it.",
    )
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration = timedelta(hours=2)
    tuning: Tuning | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> Training:
        if self.backend == "pipeline" and (not self.pipeline or self.job is not None):
            raise ValueError("training.backend pipeline names a pipeline and no job")
        if self.backend == "job":
            kind = (self.job or {}).get("apiVersion"), (self.job or {}).get("kind")
            if kind not in JOB_KINDS:
                supported = ", ".join(sorted(f"{k} ({a})" for a, k in JOB_KINDS))
                raise ValueError(f"training.job must be one of {supported}; got {kind[1]} ({kind[0]})")
            if self.tuning is not None:
                raise ValueError(
                    "training.tuning runs the model's pipeline as trials: it needs backend pipeline"
                )
        return self


class Features(_Strict):
    """A Feast feature repository in the model's GitLab project, built like its pipeline: `feast plan` on
    merge requests that touch it, `feast apply` on pushes to the policy's branch."""

    path: str = Field(
        pattern=r"^[^/].*[^/]$|^[^/]$",
        description="The repository's folder (holding feature_store.yaml), relative to the project root.",
    )
    registry: str | None = Field(
        None,
        description="The Feast registry to plan against and apply to: a file path, s3:// or gs:// URI, or a "
        "SQLAlchemy URL (a SQL registry). Unset: the repository's own when it is absolute or remote, else "
        "MLCD_HOME/feast/<model>/registry.db (the embedded default, local provider).",
    )
    retrain: bool = Field(False, description="An applied change retrains the model on its newest batch.")

    def touched_by(self, path: str) -> bool:
        return path.startswith(self.path.rstrip("/") + "/")


class Rule(_Strict):
    name: str
    expr: str = Field(
        description="CEL over candidate, champion, data and training; true means pass. `data` is the "
        "candidate's batch: uri, and from the validator's verdict validated, suite, rows, expectations, "
        'failed_expectations and columns["NAME"] (the figures its expectations observed).'
    )
    description: str = ""


class Promotion(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    first_model_rules: list[Rule] | None = Field(
        None, description="Rules when there is no champion yet; default: `rules` with champion = null."
    )


class Approval(_Strict):
    required: bool = True
    when: str | None = Field(None, description="CEL; when set, approval is required only if it is true.")
    groups: list[str] = Field(default_factory=lambda: ["oncall"])
    count: int = Field(1, ge=1)
    timeout: Duration = timedelta(hours=24)
    allow_gitlab_maintainers: bool = True
    gitlab_users: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Approver group → GitLab usernames who act for it in merge-request comments.",
    )
    merge_request_approval: bool = Field(
        False,
        description="An approval of the merge request that changed the pipeline counts as an approval of "
        "its candidate's gate (from an allowed approver who is not the change's author).",
    )


class Thresholds(_Strict):
    """The built-in checks' bounds, used when a rollout lists no `analysis` of its own."""

    max_error_rate: float = 0.05
    max_p95_latency_s: float = 1.0
    min_requests: int = Field(
        20, ge=1, description="Fewer requests in a window is inconclusive, never a pass."
    )


Template = Literal[
    "request-success-rate",
    "request-duration-p95",
    "request-count",
    "request-duration-mean",
    "latency-ratio-to-champion",
    "prediction-agreement",
]
TEMPLATES: tuple[str, ...] = get_args(Template)
# Seldon Core 2 only: its per-model metrics carry a latency sum and count, not a histogram, so the mean
# replaces p95 there; the champion comparison and the agreement probe need its one-Model-per-version layout.
SELDON_TEMPLATES = ("request-duration-mean", "latency-ratio-to-champion", "prediction-agreement")
PLACEHOLDERS = ("namespace", "service", "revision", "model", "version", "window")


class Check(_Strict):
    """One analysis check, the way Flagger's metrics and Argo Rollouts' AnalysisTemplates read.

    Either a built-in `template` (its PromQL follows the serving platform and mode) or a PromQL `query`
    with `{namespace} {service} {revision} {model} {version} {window}` placeholders. The check passes
    when the query's one value lies within [min, max]; an empty result is inconclusive.
    """

    name: str
    template: Template | None = None
    query: str | None = None
    min: float | None = None
    max: float | None = None
    window: Duration | None = Field(None, description="PromQL range; default: the rollout's interval.")

    @model_validator(mode="after")
    def _one_source_and_a_bound(self) -> Check:
        if (self.template is None) == (self.query is None):
            raise ValueError(f"check {self.name!r}: give exactly one of template or query")
        if self.min is None and self.max is None:
            raise ValueError(f"check {self.name!r}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"check {self.name!r}: min is above max")
        return self


def default_checks(thresholds: Thresholds, platform: str | None = None) -> list[Check]:
    """What a rollout without its own `analysis` checks: success rate, p95 latency, request count
    (on Seldon the mean latency, held to the same bound: Seldon exports no per-model histogram)."""
    latency = (
        Check(name="latency-mean", template="request-duration-mean", max=thresholds.max_p95_latency_s)
        if platform == "seldon"
        else Check(name="latency-p95", template="request-duration-p95", max=thresholds.max_p95_latency_s)
    )
    return [
        Check(name="request-count", template="request-count", min=thresholds.min_requests),
        Check(name="success-rate", template="request-success-rate", min=1 - thresholds.max_error_rate),
        latency,
    ]


ModelFormat = Literal["mlflow", "sklearn", "xgboost", "tensorflow", "pytorch", "onnx", "triton"]


class Predictor(_Strict):
    """How KServe serves the model: the predictor's modelFormat, and a named runtime if any."""

    model_format: ModelFormat = Field(
        "mlflow", description="mlflow: KServe's MLServer runtime (Open Inference Protocol v2)."
    )
    runtime: str | None = Field(None, description="A ServingRuntime by name; default: KServe picks.")
    protocol_version: Literal["v1", "v2"] | None = Field(
        None, description="Default: v2 for mlflow, sklearn and xgboost (MLServer); the runtime's own else."
    )

    @property
    def protocol(self) -> str | None:
        if self.protocol_version is not None:
            return self.protocol_version
        return "v2" if self.model_format in {"mlflow", "sklearn", "xgboost"} else None


class Rollout(_Strict):
    platform: Literal["kserve", "seldon", "local"] | None = Field(
        None,
        description="Serving platform: kserve (MLCD_KSERVE_NAMESPACE), seldon (Seldon Core 2 Model and "
        "Experiment, MLCD_SELDON_NAMESPACE) or local; unset: kserve when configured, else local.",
    )
    mode: Literal["serverless", "raw"] = Field(
        "serverless", description="KServe canary style: canaryTrafficPercent, or spec.canary (v0.20+)."
    )
    steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100],
        description="Canary percentages; a first step of 0 is a shadow step (Seldon's mirror only).",
    )
    interval: Duration = timedelta(seconds=30)
    thresholds: Thresholds = Thresholds()
    analysis: list[Check] | None = Field(
        None, description="Checks between steps; default: the thresholds as built-in templates."
    )
    progress_deadline: Duration = Field(
        timedelta(minutes=10),
        description="How long a step may stay not Ready or inconclusive before on_inconclusive decides.",
    )
    on_inconclusive: Literal["pause", "rollback"] = "pause"
    guard: Duration = Field(
        timedelta(0), description="After promotion, the checks keep running this long and roll back."
    )
    predictor: Predictor = Predictor()
    probe: dict[str, Any] | None = Field(
        None,
        description="An Open Inference Protocol request ({inputs: [...]}) that the prediction-agreement "
        "check sends to both the champion and the candidate (Seldon).",
    )

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must rise strictly and end at 100")
        if any(s < 0 or s > 100 for s in steps) or 0 in steps[1:]:
            raise ValueError("each step is a percentage in 1..100 (a first step may be 0: shadow)")
        return steps

    @field_validator("probe")
    @classmethod
    def _an_inference_request(cls, probe: dict[str, Any] | None) -> dict[str, Any] | None:
        inputs = (probe or {}).get("inputs", [])
        if probe is not None and (
            not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs)
        ):
            raise ValueError("probe is an Open Inference Protocol request: {inputs: [{name, ...}, ...]}")
        return probe

    @model_validator(mode="after")
    def _what_the_platform_can_do(self) -> Rollout:
        if self.platform == "seldon":
            if any(c.template == "request-duration-p95" for c in self.analysis or []):
                raise ValueError(
                    "request-duration-p95 needs a per-model latency histogram, which Seldon Core 2 does not "
                    "export (seldon_model_infer_seconds_total is a sum): use request-duration-mean"
                )
            if any(c.template == "prediction-agreement" for c in self.analysis or []) and not self.probe:
                raise ValueError("the prediction-agreement check sends rollout.probe: give one")
            return self
        if self.steps[0] == 0:
            raise ValueError(
                "a first step of 0 is a shadow step (the candidate gets a mirrored copy of the traffic); "
                "only rollout.platform: seldon can mirror (KServe cannot, kserve/kserve#2240)"
            )
        seldon_only = sorted({c.template for c in self.analysis or [] if c.template in SELDON_TEMPLATES})
        if seldon_only:
            raise ValueError(f"template(s) {', '.join(map(str, seldon_only))} need rollout.platform: seldon")
        return self

    @field_validator("analysis")
    @classmethod
    def _unique_names(cls, checks: list[Check] | None) -> list[Check] | None:
        names = [c.name for c in checks or []]
        if len(names) != len(set(names)):
            raise ValueError("analysis check names must be unique")
        return checks

    def checks(self) -> list[Check]:
        if self.analysis is not None:
            return list(self.analysis)
        return default_checks(self.thresholds, self.platform)


Action = Literal["retrain", "rollback", "notify"]


def _default_actions() -> dict[str, Action]:
    return {"critical": "rollback", "warning": "retrain", "info": "notify"}


class Monitoring(_Strict):
    debounce: Duration = timedelta(minutes=10)
    actions: dict[str, Action] = Field(
        default_factory=_default_actions,
        description="Alert severity → action.",
    )

    def action_for(self, severity: str) -> Action:
        return self.actions.get(severity, "notify")


# --- notify: where a model's notices go (the notifier service) ---------------------------------------

NoticeKind = Literal[
    "notice",
    "data_rejected",
    "training_failed",
    "pipeline_build_failed",
    "gate_opened",
    "gate_decided",
    "gate_expired",
    "rollout_paused",
    "rollout_succeeded",
    "rolled_back",
]
NOTICE_KINDS: tuple[str, ...] = get_args(NoticeKind)


class NotifyChannel(_Strict):
    kind: Literal["slack", "teams", "webhook", "gitlab"] = Field(
        description="slack: Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat); teams: "
        "Microsoft Teams incoming webhook; webhook: generic JSON POST; gitlab: a note on the commit or "
        "merge request, or an issue for data-triggered work."
    )
    url: str | None = Field(
        None, description="Webhook URL; for slack, unset means MLCD_SLACK_WEBHOOK_URL. Not used by gitlab."
    )
    events: list[NoticeKind] | None = Field(None, description="Only these kinds; unset: every kind.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise ValueError("a webhook URL starts with http:// or https:// and names a host")
        return url


class Notify(_Strict):
    channels: list[NotifyChannel] | None = Field(
        None,
        description="Where notices go; unset: MLCD_SLACK_WEBHOOK_URL (else the log) and GitLab notes.",
    )


class Policy(_Strict):
    model: str
    code: CodeSource | None = None
    data: DataSource | None = None
    training: Training | None = None
    features: Features | None = None
    promotion: Promotion = Promotion()
    approval: Approval = Approval()
    rollout: Rollout = Rollout()
    monitoring: Monitoring = Monitoring()
    serving_name: str | None = Field(None, description="InferenceService name; default: the model name.")
    notify: Notify = Notify()
