"""Applied features retrain a model where its policy says `features.retrain`: the trainer against the fake
KFP API, on the model's newest validated batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import objectstore
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.optuna_tuner import OptunaTuner
from mlcd.adapters.training_jobs import NoTrainingJobs
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.store import training
from mlcd.store.tables import outbox
from mlcd.store.unit_of_work import UnitOfWork
from mlcd.trainer import decisions
from mlcd.trainer.handlers import SERVICE
from tests.conftest import unique
from tests.fakes import kfp_api
from tests.support import service_harness

BATCH = "s3://landing/wine_quality/batch-07.csv"


@pytest.fixture
def fake() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        yield server


async def _ports(tmp_path: Path, fake: kfp_api.FakeKfp, mlflow_uri: str, retrain: bool) -> dict[str, Any]:
    package = tmp_path / "package.yaml"
    package.write_text("pipelineInfo:\n  name: wine-quality\n")
    orchestrator = KfpClientOrchestrator(fake.url, timeout_s=5)
    await orchestrator.publish("wine_quality", "0123abcd", package)
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "wine_quality.yaml").write_text(
        "model: wine_quality\ntraining: {pipeline: wine_quality}\n"
        f"features: {{path: features/wine_quality, retrain: {str(retrain).lower()}}}\n"
    )
    settings = Settings(
        home=tmp_path,
        mlflow_tracking_uri=mlflow_uri,
        kfp_host=fake.url,
        s3_endpoint="minio.example:9000",  # only named in run parameters: no S3 call is made
    )
    return {
        "settings": settings,
        "policies": PolicyBook(folder),
        "orchestrator": orchestrator,
        "registry": MlflowRegistry(mlflow_uri),
        "objects": objectstore.build(settings),
        "tuner": OptunaTuner(tmp_path, {}),
        "jobs": NoTrainingJobs(),
    }


async def _a_batch_was_validated(engine: AsyncEngine, model: str, uri: str) -> None:
    uow = UnitOfWork(engine, "test/setup")
    async with uow.transaction() as tx:
        await training.lock_model(tx.connection, model)
        await training.remember_data(tx.connection, training.Trigger(model, "earlier", uri, "validated"))


def applied(commit: str) -> events.FeaturesApplied:
    return events.FeaturesApplied(
        model="wine_quality",
        project="ml/wine-quality",
        commit=commit,
        path="features/wine_quality",
        feast_project="wine_quality",
        registry="/var/lib/mlcd/feast/wine_quality/registry.db",
        changes=["Updated feature view wine_chemistry"],
        author="alice",
    )


async def _started(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.value).where(outbox.c.event_type == events.TrainingStarted.type)
        )
        return [json.loads(row.value) for row in rows]


@pytest.mark.parametrize("retrain", [True, False])
async def test_applied_features_retrain_on_the_newest_batch_only_where_the_policy_says_so(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, tmp_path: Path, mlflow_uri: str, retrain: bool
) -> None:
    ports = await _ports(tmp_path, fake, mlflow_uri, retrain)
    await _a_batch_was_validated(engine, "wine_quality", BATCH)
    event_id = unique("features")

    await service_harness.deliver(engine, SERVICE, applied("9a8b7c6d" * 5), ports, event_id=event_id)

    started = await _started(engine)
    if not retrain:
        assert fake.created_runs() == [] and started == []
        return
    run = fake.run_named(decisions.run_name("wine_quality", event_id))
    assert run["runtime_config"]["parameters"]["data_uri"] == BATCH
    assert [(s["trigger_event_id"], s["data_uri"], s["author"]) for s in started] == [
        (event_id, BATCH, "alice")
    ]
