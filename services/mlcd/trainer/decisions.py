"""The trainer's decisions, free of I/O: run names, run parameters, admission, follow-up pacing, outcomes."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from mlcd import events
from mlcd.config import Settings
from mlcd.ports import Run

FIRST_CHECK = timedelta(seconds=0.5)
LONGEST_CHECK = timedelta(seconds=30)
CHECK_GROWTH = 1.5


class Admission(Enum):
    START = "start"  # no run is active: start one now
    QUEUE = "queue"  # a run is active: this trigger becomes the (one) follow-up, replacing an older one
    DUPLICATE = "duplicate"  # the active run was started by this very trigger


def admit(active_trigger_id: str | None, trigger_id: str) -> Admission:
    """At most one active run per model; triggers during a run coalesce into one follow-up."""
    if active_trigger_id is None:
        return Admission.START
    return Admission.DUPLICATE if active_trigger_id == trigger_id else Admission.QUEUE


def run_name(model: str, trigger_event_id: str) -> str:
    """The KFP run's name: derived from the trigger, so a redelivered trigger finds its run."""
    return f"mlcd-{model}-{trigger_event_id}"


def run_alias(name: str) -> str:
    """The MLflow alias the pipeline puts on the version it registers, so mlcd can find it by run."""
    return "mlcd-run-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def event_id_of(name: str, what: str) -> str:
    """Ids of the events about one run (started, succeeded, failed): the same on every retry."""
    return events.event_id("mlcd.trainer", name, what)


def s3_endpoint_url(settings: Settings) -> str:
    if not settings.s3_endpoint:
        return ""
    if "://" in settings.s3_endpoint:
        return settings.s3_endpoint
    return ("https://" if settings.s3_secure else "http://") + settings.s3_endpoint


def run_parameters(
    *,
    model: str,
    data_uri: str,
    commit: str,
    pipeline_version: str,
    name: str,
    tracking_uri: str,
    settings: Settings,
    policy_parameters: dict[str, Any],
) -> dict[str, Any]:
    """The policy's parameters, then what mlcd knows about this run (which the policy cannot override)."""
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else ""
    return {
        **policy_parameters,
        "data_uri": data_uri,
        "model_name": model,
        "mlflow_tracking_uri": tracking_uri,
        "git_commit": commit,
        "pipeline_version": pipeline_version,
        "run_alias": run_alias(name),
        "s3_endpoint": s3_endpoint_url(settings),
        "s3_access_key": access,
        "s3_secret_key": secret,
    }


def check_delay(checks: int) -> timedelta:
    """How long to wait before looking at a run again after `checks` looks: grows, then levels off."""
    return min(LONGEST_CHECK, FIRST_CHECK * CHECK_GROWTH ** min(checks, 20))


def timed_out(started_at: datetime, now: datetime, limit: timedelta) -> bool:
    return now - started_at > limit


def model_version(outputs: dict[str, Any]) -> str | None:
    """The registered version a run reports; kfp.local hands integers back as floats (3.0 → '3')."""
    value = outputs.get("model_version")
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def training_metrics(outputs: dict[str, Any]) -> dict[str, float]:
    """Figures a run reports: its `metrics` output (JSON object) or numeric outputs named like metrics."""
    raw = outputs.get("metrics")
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            return {k: float(v) for k, v in parsed.items() if isinstance(v, int | float)}
    return {
        k: float(v)
        for k, v in outputs.items()
        if k != "model_version" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def failure_reason(run: Run) -> str:
    if run.state == "FAILED" and run.failed_task:
        return f"task {run.failed_task} failed"
    return f"run {run.name or run.run_id} ended {run.state}"
