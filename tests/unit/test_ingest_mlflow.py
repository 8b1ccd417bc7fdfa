"""MLflow registry webhooks: a version registered outside mlcd becomes a candidate."""

from __future__ import annotations

import json
from pathlib import Path

from mlcd import events
from mlcd.ingest import mlflow_hooks
from mlcd.policy.book import PolicyBook

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
POLICIES = PolicyBook(REPO / "policies")
HEADERS = {"x-mlflow-delivery-id": "d-1"}


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_model_version_created_becomes_a_registered_candidate() -> None:
    [candidate] = mlflow_hooks.parse(body("mlflow_model_version_created.json"), HEADERS, POLICIES)
    assert isinstance(candidate.data, events.CandidateRegistered)
    assert candidate.data.model_dump() == {
        "model": "wine_quality",
        "model_version": "5",
        "run_id": None,
        "source": "models:/m-0a1b2c3d4e5f",
    }


def test_versions_mlcd_registered_itself_are_ignored() -> None:
    raw = json.loads(body("mlflow_model_version_created.json"))
    raw["data"]["tags"]["mlcd.trigger_event_id"] = "e-1"
    [journal] = mlflow_hooks.parse(json.dumps(raw).encode(), HEADERS, POLICIES)
    assert isinstance(journal.data, events.DeliveryIgnored)


def test_alias_changes_are_ignored() -> None:
    [journal] = mlflow_hooks.parse(body("mlflow_alias_created.json"), HEADERS, POLICIES)
    assert isinstance(journal.data, events.DeliveryIgnored)
    assert journal.data.kind == "model_version_alias.created"


def test_delivery_id_identifies_the_event() -> None:
    first = mlflow_hooks.parse(body("mlflow_model_version_created.json"), HEADERS, POLICIES)[0]
    other = mlflow_hooks.parse(
        body("mlflow_model_version_created.json"), {"x-mlflow-delivery-id": "d-2"}, POLICIES
    )[0]
    assert first.id != other.id
