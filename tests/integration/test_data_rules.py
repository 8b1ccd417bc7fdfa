"""A promotion rule over the batch's validation result: batches validated by the real Great Expectations
suite, candidates registered in a real MLflow registry, judged by the gatekeeper service and by
`mlcd explain`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, explain
from mlcd.adapters import objectstore
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.config import Settings
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.local.serving import LocalServing
from mlcd.policy.book import PolicyBook
from mlcd.validator import handlers as validator
from tests.support import service_harness

REPO = Path(__file__).resolve().parents[2]
MODEL = "wine_quality"
POLICY = """
model: wine_quality
data:
  bucket: landing
  prefix: wine_quality/
  suite: pipelines/wine_quality/expectations.json
promotion:
  rules:
    - name: enough_rows
      expr: data.rows >= 150 && size(data.failed_expectations) == 0
    - name: alcohol_not_drifted
      expr: data.columns["alcohol"].mean <= 13.5
approval:
  required: false
"""
# The reference suite plus one figure a rule reads: the mean alcohol of the batch (a wide band, so the
# drifted batch still passes the suite and only the promotion rule holds it back).
MEAN = {
    "type": "expect_column_mean_to_be_between",
    "kwargs": {"column": "alcohol", "min_value": 8, "max_value": 18},
}


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("batches")
    script = REPO / "pipelines/wine_quality/make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    return {path.stem: path.read_bytes() for path in out.glob("*.csv")}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    (repo / "policies/wine_quality.yaml").write_text(POLICY)
    (repo / "pipelines/wine_quality").mkdir(parents=True)
    suite = json.loads((REPO / "pipelines/wine_quality/expectations.json").read_text())
    suite["expectations"].append(MEAN)
    (repo / "pipelines/wine_quality/expectations.json").write_text(json.dumps(suite))
    shutil.copy(REPO / "policies/defaults.yaml", repo / "policies/defaults.yaml")
    return Settings(home=tmp_path / "home", policies_dir=repo / "policies", pipelines_dir=repo / "pipelines")


@pytest.fixture
def registry(tmp_path: Path) -> MlflowRegistry:
    """MLflow's own registry on a SQLite store (no server needed), with two versions of the model."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("data-rules", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model(MODEL)
    for _ in range(2):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", 0.93)
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return MlflowRegistry(uri)


async def _validated(engine: AsyncEngine, settings: Settings, name: str, data: bytes) -> events.DataValidated:
    objects = objectstore.build(settings)
    key = f"wine_quality/{name}.csv"
    uri = await objects.put("landing", key, data)
    arrived = events.DataArrived(model=MODEL, bucket="landing", key=key, uri=uri, size=len(data))
    ports = {"settings": settings, "policies": PolicyBook(settings.policies_dir), "objects": objects}
    (outcome,) = await service_harness.deliver(engine, validator.SERVICE, arrived, ports)
    assert isinstance(outcome, events.DataValidated), outcome
    return outcome


def _trained(version: str, data_uri: str) -> events.TrainingSucceeded:
    return events.TrainingSucceeded(
        model=MODEL, run_id=f"run-{version}", model_version=version, metrics={}, data_uri=data_uri
    )


async def _judged(
    engine: AsyncEngine, settings: Settings, registry: MlflowRegistry, trained: events.TrainingSucceeded
) -> events.Payload:
    ports: dict[str, Any] = {
        "settings": settings,
        "policies": PolicyBook(settings.policies_dir),
        "registry": registry,
        "serving": LocalServing(settings.home, "http://127.0.0.1:9"),
        "code_host": None,
        "notifier": None,
    }
    (decision,) = await service_harness.deliver(engine, gatekeeper.SERVICE, trained, ports)
    return decision


async def test_a_candidate_trained_on_a_drifted_batch_is_rejected_by_its_data_rule(
    engine: AsyncEngine, settings: Settings, registry: MlflowRegistry, batches: dict[str, bytes]
) -> None:
    clean = await _validated(engine, settings, "clean", batches["clean"])
    drifted = await _validated(engine, settings, "drifted", batches["drifted"])

    on_clean = await _judged(engine, settings, registry, _trained("1", clean.uri))
    on_drifted = await _judged(engine, settings, registry, _trained("2", drifted.uri))

    assert isinstance(on_clean, events.PromotionApproved)
    assert isinstance(on_drifted, events.PromotionRejected)
    outcomes = {rule.name: rule for rule in on_drifted.rules}
    assert outcomes["enough_rows"].passed
    assert outcomes["enough_rows"].values == {"data.rows": 178, "data.failed_expectations": []}
    assert not outcomes["alcohol_not_drifted"].passed
    assert outcomes["alcohol_not_drifted"].error == ""
    mean = outcomes["alcohol_not_drifted"].values['data.columns["alcohol"].mean']
    assert 13.5 < mean < 14.5  # the drifted batch's alcohol, shifted by 0.9
    assert "alcohol_not_drifted" in on_drifted.reason

    said = await explain.explain(
        events.new_event(_trained("2", drifted.uri), source="mlcd/test"),
        PolicyBook(settings.policies_dir),
        registry,
        engine,
    )
    assert said.emits == [events.TrainingSucceeded.type, events.PromotionRejected.type]
    checked = len(drifted.expectations)
    batch_line = (
        f"gatekeeper: trained on {drifted.uri}: validated by suite wine_quality (178 rows, {checked} "
    )
    assert batch_line + "expectations, 0 failed)" in said.steps
    rule_lines = [step.strip() for step in said.steps if step.strip().startswith(("pass", "FAIL"))]
    assert [line.split()[1] for line in rule_lines] == ["enough_rows:", "alcohol_not_drifted:"]
    assert rule_lines[1].startswith("FAIL") and f'data.columns["alcohol"].mean={mean}' in rule_lines[1]


async def test_a_candidate_whose_batch_has_no_verdict_fails_the_data_rules_saying_so(
    engine: AsyncEngine, settings: Settings, registry: MlflowRegistry
) -> None:
    uri = objectstore.build(settings).uri("landing", "wine_quality/never-validated.csv")

    decision = await _judged(engine, settings, registry, _trained("1", uri))

    assert isinstance(decision, events.PromotionRejected)
    outcomes = {rule.name: rule for rule in decision.rules}
    assert outcomes["alcohol_not_drifted"].error == (
        f'missing: data.columns["alcohol"].mean (no validation result for batch {uri})'
    )
