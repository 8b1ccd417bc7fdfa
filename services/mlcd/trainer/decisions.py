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


RUN_NAME_TAG = "mlcd.run_name"
"""The version tag the pipeline sets to the run's name (pipelines/wine_quality/README.md)."""


def is_job(run_id: str) -> bool:
    """A Training Operator job's run id is `<plural>/<name>`; KFP's are UUIDs, the local runner's names."""
    return "/" in run_id


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
    data_etag: str,
    data_version_id: str,
    commit: str,
    pipeline_version: str,
    name: str,
    tracking_uri: str,
    settings: Settings,
    policy_parameters: dict[str, Any],
) -> dict[str, Any]:
    """The policy's parameters, then what mlcd knows about this run (which the policy cannot override).

    No secret is ever a parameter (KFP shows parameters in its UI and run records): the pipeline's tasks
    read S3 credentials from their environment. `data_etag` and `data_version_id` pin the batch's bytes as
    validated (the pipeline reads that version, or fails if the object's ETag changed); empty: the latest.
    """
    return {
        **policy_parameters,
        "data_uri": data_uri,
        "data_etag": data_etag,
        "data_version_id": data_version_id,
        "model_name": model,
        "mlflow_tracking_uri": tracking_uri,
        "git_commit": commit,
        "pipeline_version": pipeline_version,
        "run_name": name,
        "run_alias": run_alias(name),
        "s3_endpoint": s3_endpoint_url(settings),
    }


def s3_location(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of an `s3://bucket/key` URI, the key as stored (not URL-decoded); None for others."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return (bucket, key) if bucket and key else None


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
