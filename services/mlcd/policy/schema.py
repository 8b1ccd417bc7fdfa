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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

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
    max_error_rate: float = 0.05
    max_p95_latency_s: float = 1.0
    min_requests: int = 0


class Rollout(_Strict):
    mode: Literal["serverless", "raw"] = Field(
        "serverless", description="KServe canary style: canaryTrafficPercent, or spec.canary (v0.20+)."
    )
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    interval: Duration = timedelta(seconds=30)
    thresholds: Thresholds = Thresholds()

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must rise strictly and end at 100")
        if any(s <= 0 or s > 100 for s in steps):
            raise ValueError("each step is a percentage in 1..100")
        return steps


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
