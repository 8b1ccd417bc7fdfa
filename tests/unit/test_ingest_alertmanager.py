"""Alertmanager notifications become monitoring alerts for models that have a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcd import events
from mlcd.ingest import alertmanager
from mlcd.ingest.delivery import Unparseable
from mlcd.policy.book import PolicyBook

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
POLICIES = PolicyBook(REPO / "policies")


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_firing_alert_with_a_model_label_fires_and_one_without_is_ignored() -> None:
    fired, unlabelled = alertmanager.parse(body("alertmanager_firing.json"), POLICIES)
    assert isinstance(fired.data, events.AlertFired)
    assert (fired.data.model, fired.data.alert, fired.data.severity) == (
        "wine_quality",
        "FeatureDrift",
        "warning",
    )
    assert fired.data.annotations["psi"] == "0.31"
    assert isinstance(unlabelled.data, events.DeliveryIgnored)
    assert "no model label" in unlabelled.data.reason


def test_resolution_is_recorded_as_a_distinct_event() -> None:
    [fired, _] = alertmanager.parse(body("alertmanager_firing.json"), POLICIES)
    [resolved] = alertmanager.parse(body("alertmanager_resolved.json"), POLICIES)
    assert isinstance(resolved.data, events.AlertResolved)
    assert resolved.data.ends_at is not None
    assert resolved.id != fired.id


def test_repeated_firing_notification_has_the_same_id() -> None:
    first = alertmanager.parse(body("alertmanager_firing.json"), POLICIES)
    repeat = alertmanager.parse(body("alertmanager_firing.json"), POLICIES)
    assert [e.id for e in first] == [e.id for e in repeat]


def test_alert_for_a_model_without_a_policy_is_ignored() -> None:
    raw = json.loads(body("alertmanager_firing.json"))
    raw["alerts"][0]["labels"]["model"] = "unknown_model"
    journal = alertmanager.parse(json.dumps(raw).encode(), POLICIES)[0]
    assert isinstance(journal.data, events.DeliveryIgnored)


def test_other_webhook_versions_are_unparseable() -> None:
    raw = json.loads(body("alertmanager_firing.json"))
    raw["version"] = "5"
    with pytest.raises(Unparseable, match="version"):
        alertmanager.parse(json.dumps(raw).encode(), POLICIES)
