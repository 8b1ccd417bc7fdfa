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


class Training(_Strict):
    pipeline: str = Field(description="Folder under pipelines/ holding the KFP pipeline.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration = timedelta(hours=2)


class Rule(_Strict):
    name: str
    expr: str = Field(description="CEL over candidate, champion, data and training; true means pass.")
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


class Thresholds(_Strict):
    """The built-in checks' bounds, used when a rollout lists no `analysis` of its own."""

    max_error_rate: float = 0.05
    max_p95_latency_s: float = 1.0
    min_requests: int = Field(
        20, ge=1, description="Fewer requests in a window is inconclusive, never a pass."
    )


TEMPLATES = ("request-success-rate", "request-duration-p95", "request-count")
PLACEHOLDERS = ("namespace", "service", "revision", "model", "version", "window")


class Check(_Strict):
    """One analysis check, the way Flagger's metrics and Argo Rollouts' AnalysisTemplates read.

    Either a built-in `template` (its PromQL follows the serving platform and mode) or a PromQL `query`
    with `{namespace} {service} {revision} {model} {version} {window}` placeholders. The check passes
    when the query's one value lies within [min, max]; an empty result is inconclusive.
    """

    name: str
    template: Literal["request-success-rate", "request-duration-p95", "request-count"] | None = None
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


def default_checks(thresholds: Thresholds) -> list[Check]:
    """What a rollout without its own `analysis` checks: success rate, p95 latency, request count."""
    return [
        Check(name="request-count", template="request-count", min=thresholds.min_requests),
        Check(name="success-rate", template="request-success-rate", min=1 - thresholds.max_error_rate),
        Check(name="latency-p95", template="request-duration-p95", max=thresholds.max_p95_latency_s),
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
    mode: Literal["serverless", "raw"] = Field(
        "serverless", description="KServe canary style: canaryTrafficPercent, or spec.canary (v0.20+)."
    )
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
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

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must rise strictly and end at 100")
        if any(s <= 0 or s > 100 for s in steps):
            raise ValueError("each step is a percentage in 1..100")
        return steps

    @field_validator("analysis")
    @classmethod
    def _unique_names(cls, checks: list[Check] | None) -> list[Check] | None:
        names = [c.name for c in checks or []]
        if len(names) != len(set(names)):
            raise ValueError("analysis check names must be unique")
        return checks

    def checks(self) -> list[Check]:
        return list(self.analysis) if self.analysis is not None else default_checks(self.thresholds)


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
    promotion: Promotion = Promotion()
    approval: Approval = Approval()
    rollout: Rollout = Rollout()
    monitoring: Monitoring = Monitoring()
    serving_name: str | None = Field(None, description="InferenceService name; default: the model name.")
    notify: Notify = Notify()
