"""Alertmanager webhooks (version 4) → AlertFired / AlertResolved for alerts that carry a `model` label.

An alert's identity is the group key, its fingerprint, its start and its status: a repeated firing
notification is the same event, its resolution a new one.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from mlcd import events
from mlcd.ingest.delivery import (
    Envelope,
    ModelDirectory,
    Unparseable,
    envelope,
    ignored,
    load_object,
    validate,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Alert(_Body):
    status: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    fingerprint: str


class _Notification(_Body):
    version: str
    group_key: str = Field(alias="groupKey")
    alerts: list[_Alert]


def parse(body: bytes, models: ModelDirectory) -> list[Envelope]:
    notification = validate(_Notification, load_object(body), "Alertmanager notification")
    if notification.version != "4":
        raise Unparseable(f"Alertmanager webhook version {notification.version!r}, expected '4'")
    if not notification.alerts:
        raise Unparseable("Alertmanager notification without alerts")
    return [_alert(alert, notification.group_key, models) for alert in notification.alerts]


def _alert(alert: _Alert, group_key: str, models: ModelDirectory) -> Envelope:
    identity = ("alertmanager", group_key, alert.fingerprint, alert.starts_at.isoformat(), alert.status)
    name = alert.labels.get("alertname", "")
    model = alert.labels.get("model")
    if not model:
        return ignored("alertmanager", name, "the alert has no model label", identity)
    if models.get(model) is None:
        return ignored("alertmanager", name, f"no policy for model {model!r}", identity)
    if alert.status == "resolved":
        resolved = events.AlertResolved(
            model=model,
            alert=name,
            fingerprint=alert.fingerprint,
            starts_at=alert.starts_at,
            ends_at=alert.ends_at,
        )
        return envelope(resolved, identity)
    if alert.status != "firing":
        return ignored("alertmanager", name, f"alert status {alert.status!r}", identity, model=model)
    fired = events.AlertFired(
        model=model,
        alert=name,
        severity=alert.labels.get("severity", "info"),
        fingerprint=alert.fingerprint,
        starts_at=alert.starts_at,
        labels=alert.labels,
        annotations=alert.annotations,
    )
    return envelope(fired, identity)
