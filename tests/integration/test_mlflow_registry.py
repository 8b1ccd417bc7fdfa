"""The Registry adapter against a real MLflow server."""

from __future__ import annotations

import uuid

import pytest

from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.errors import NotFound


def _register(uri: str, model: str, accuracy: float) -> str:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test")
    )
    run = client.create_run(experiment.experiment_id)
    client.log_metric(run.info.run_id, "accuracy", accuracy)
    client.log_param(run.info.run_id, "n_estimators", "10")
    client.set_tag(run.info.run_id, "data_uri", "s3://landing/wine/batch.csv")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return str(mv.version)


async def test_version_carries_its_runs_metrics_params_and_tags(mlflow_uri: str) -> None:
    model = f"m_{uuid.uuid4().hex[:8]}"
    version = _register(mlflow_uri, model, 0.91)
    registry = MlflowRegistry(mlflow_uri)

    found = await registry.get_version(model, version)

    assert found.metrics == {"accuracy": 0.91}
    assert found.params == {"n_estimators": "10"}
    assert found.tags["data_uri"] == "s3://landing/wine/batch.csv"


async def test_alias_moves_and_reads_back(mlflow_uri: str) -> None:
    model = f"m_{uuid.uuid4().hex[:8]}"
    first, second = _register(mlflow_uri, model, 0.8), _register(mlflow_uri, model, 0.9)
    registry = MlflowRegistry(mlflow_uri)
    assert await registry.version_by_alias(model, "champion") is None

    await registry.set_alias(model, "champion", first)
    await registry.set_alias(model, "champion", second)
    champion = await registry.version_by_alias(model, "champion")

    assert champion is not None and champion.version == second and "champion" in champion.aliases
    await registry.delete_alias(model, "champion")
    assert await registry.version_by_alias(model, "champion") is None


async def test_version_tags_are_written(mlflow_uri: str) -> None:
    model = f"m_{uuid.uuid4().hex[:8]}"
    version = _register(mlflow_uri, model, 0.5)
    registry = MlflowRegistry(mlflow_uri)

    await registry.set_version_tags(model, version, {"mlcd.decision": "rejected"})

    assert (await registry.get_version(model, version)).tags["mlcd.decision"] == "rejected"


async def test_version_is_found_by_tag(mlflow_uri: str) -> None:
    model = f"m_{uuid.uuid4().hex[:8]}"
    _register(mlflow_uri, model, 0.5)
    wanted = _register(mlflow_uri, model, 0.7)
    registry = MlflowRegistry(mlflow_uri)
    await registry.set_version_tags(model, wanted, {"mlcd.run_name": "wine-run-1"})

    found = await registry.version_by_tag(model, "mlcd.run_name", "wine-run-1")

    assert found is not None and found.version == wanted and found.metrics == {"accuracy": 0.7}
    assert await registry.version_by_tag(model, "mlcd.run_name", "wine-run-2") is None


async def test_missing_version_is_not_found(mlflow_uri: str) -> None:
    with pytest.raises(NotFound):
        await MlflowRegistry(mlflow_uri).get_version("no_such_model", "1")
