"""Tuned retrains (Katib on the Kubernetes API emulator, Optuna on the embedded default) and Training
Operator jobs, with the trainer's handlers, real pipeline runs on kfp.local, a real MLflow server and real
Optuna. The stand-in controllers REALLY run each trial's and job's container here, so every metric and
model version below was produced by training, not written by the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from mlflow import MlflowClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import kfp, objectstore, optuna_tuner, training_jobs
from mlcd.adapters.katib import KatibTuner
from mlcd.adapters.kfp import LocalOrchestrator
from mlcd.adapters.kube import CustomObjects
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.store import migrate
from mlcd.store.database import create_engine
from mlcd.store.tables import outbox
from mlcd.trainer import decisions, tuning
from mlcd.trainer.handlers import SERVICE
from tests.conftest import REPO, unique
from tests.fakes import kubeflow_api
from tests.support import flows, service_harness

NS = "kubeflow-ml"
JOB_SCRIPT = REPO / "tests" / "fixtures" / "training_job" / "train_wine.py"
pytestmark = pytest.mark.slow


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def batch(tmp_path: Path) -> str:
    script = REPO / "pipelines" / "wine_quality" / "make_batches.py"
    await asyncio.to_thread(subprocess.run, [sys.executable, str(script), str(tmp_path / "data")], check=True)
    return (tmp_path / "data" / "clean.csv").as_uri()


@pytest.fixture
def settings(tmp_path: Path, mlflow_uri: str) -> Settings:
    return Settings(home=tmp_path / "home", mlflow_tracking_uri=mlflow_uri, pipelines_dir=REPO / "pipelines")


@pytest.fixture
async def orchestrator(settings: Settings) -> AsyncIterator[LocalOrchestrator]:
    built = kfp.build(settings)
    assert isinstance(built, LocalOrchestrator)
    yield built
    await built.close()


@pytest.fixture
async def cluster() -> AsyncIterator[kubeflow_api.KubeflowApi]:
    async with kubeflow_api.api_running() as api:
        yield api


def objects(cluster: kubeflow_api.KubeflowApi) -> CustomObjects:
    return CustomObjects(lambda: client.ApiClient(client.Configuration(host=cluster.url)), NS, timeout_s=10)


def write_policy(folder: Path, model: str, training: dict[str, Any]) -> PolicyBook:
    folder.mkdir(exist_ok=True)
    shutil.copy(REPO / "policies" / "defaults.yaml", folder)
    (folder / f"{model}.yaml").write_text(yaml.safe_dump({"model": model, "training": training}))
    return PolicyBook(folder)


def tuned_training(**tuning_fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "wine_quality",
        "parameters": {"n_estimators": 50},
        "tuning": {
            "objective": {"metric": "accuracy", "type": "maximize", "additional_metrics": ["f1_macro"]},
            "algorithm": "grid",
            # 1 tree against 11 and 21: the search must find that more trees do better on this batch
            "parameters": [{"name": "n_estimators", "type": "int", "min": 1, "max": 21, "step": 10}],
            "max_trials": 3,
            "parallel_trials": 3,
            **tuning_fields,
        },
    }


def ports(
    settings: Settings, policies: PolicyBook, orchestrator: Any, tuner: Any, jobs: Any
) -> dict[str, Any]:
    assert settings.mlflow_tracking_uri is not None
    return {
        "settings": settings,
        "policies": policies,
        "orchestrator": orchestrator,
        "registry": MlflowRegistry(settings.mlflow_tracking_uri),
        "objects": objectstore.build(settings),
        "tuner": tuner,
        "jobs": jobs,
    }


async def emitted(engine: AsyncEngine, payload_type: type[events.Payload]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.value).where(outbox.c.event_type == payload_type.type).order_by(outbox.c.seq)
        )
        return [json.loads(row.value) for row in rows]


async def finished(engine: AsyncEngine, wired: dict[str, Any], timeout_s: float = 280) -> dict[str, Any]:
    """Run the trainer's follow timer until the run is reported; its TrainingSucceeded or TrainingFailed."""

    async def reported() -> bool:
        await service_harness.tick(engine, SERVICE, wired)
        return bool(
            await emitted(engine, events.TrainingSucceeded) or await emitted(engine, events.TrainingFailed)
        )

    await flows.eventually(reported, "the trainer reporting the run", timeout_s)
    [outcome] = await emitted(engine, events.TrainingSucceeded) or await emitted(
        engine, events.TrainingFailed
    )
    return outcome


def validated(model: str, uri: str) -> events.DataValidated:
    return events.DataValidated(
        model=model, uri=uri, rows=178, suite="wine_quality", result_uri=uri + ".json"
    )


async def test_a_tuned_retrain_on_katib_trains_the_candidate_with_the_best_trial_parameters(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    cluster: kubeflow_api.KubeflowApi,
    batch: str,
    mlflow_uri: str,
) -> None:
    model, trigger = unique("wine_katib"), unique("evt")
    policies = write_policy(tmp_path / "policies", model, tuned_training())
    tuner = KatibTuner(
        objects(cluster), "registry.example.com/ml/mlcd:test", {"MLCD_MLFLOW_TRACKING_URI": mlflow_uri}
    )
    wired = ports(settings, policies, orchestrator, tuner, training_jobs.NoTrainingJobs())
    node = {"MLCD_HOME": str(settings.home.resolve()), "MLCD_PIPELINES_DIR": str(REPO / "pipelines")}

    async with kubeflow_api.KatibController(cluster, node) as katib:
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired)

    run_name = decisions.run_name(model, trigger)
    experiment = tuning.kube_name(run_name)
    assert [w for w in cluster.writes if w[1] == "experiments"] == [("create", "experiments", experiment)]
    assert cluster.refused == []
    trials = katib.trials[experiment]
    assert sorted(int(t.assignments["n_estimators"]) for t in trials) == [1, 11, 21]
    assert all(t.succeeded for t in trials), [t.output[-500:] for t in trials]
    best = max(trials, key=lambda t: t.metrics["accuracy"])
    assert best.metrics["accuracy"] > min(t.metrics["accuracy"] for t in trials)  # the search mattered

    assert outcome["tuning_experiment"] == experiment
    assert outcome["tuning_best_trial"] == best.name
    assert outcome["tuning_objective_value"] == best.metrics["accuracy"]
    assert outcome["tuned_parameters"] == {"n_estimators": int(best.assignments["n_estimators"])}
    [started] = await emitted(engine, events.TrainingStarted)
    assert started["tuning_experiment"] == experiment
    assert started["tuned_parameters"] == outcome["tuned_parameters"]
    # The done-criterion: the best trial's parameters reached the trained version.
    version = MlflowClient(tracking_uri=mlflow_uri).get_model_version(model, outcome["model_version"])
    version_run = MlflowClient(tracking_uri=mlflow_uri).get_run(str(version.run_id))
    assert version_run.data.params["n_estimators"] == best.assignments["n_estimators"]
    assert version.tags["mlcd.run_name"] == run_name
    assert version.tags["mlcd.tuning.experiment"] == experiment
    assert version.tags["mlcd.tuning.best_trial"] == best.name
    assert version.tags["mlcd.tuning.param.n_estimators"] == best.assignments["n_estimators"]
    assert float(version.tags["mlcd.tuning.objective_value"]) == best.metrics["accuracy"]
    # Same data, same seed, the best parameters: the candidate scores what its best trial scored.
    assert outcome["metrics"]["accuracy"] == best.metrics["accuracy"]
    # Trials registered their versions apart from the model's candidates.
    trial_versions = MlflowClient(tracking_uri=mlflow_uri).search_model_versions(
        f"name='{tuning.trials_model(model)}'"
    )
    assert sorted(v.tags["mlcd.run_name"] for v in trial_versions) == sorted(t.name for t in trials)
    print(
        f"\nKatib {experiment}: trials "
        + ", ".join(
            f"n_estimators={t.assignments['n_estimators']} accuracy={t.metrics['accuracy']:.4f}"
            for t in trials
        )
        + f"; best {best.name}; {model} version {version.version} params n_estimators="
        + version_run.data.params["n_estimators"]
    )


async def test_a_tuning_experiment_that_outlives_its_timeout_is_deleted_and_the_run_fails(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    cluster: kubeflow_api.KubeflowApi,
    batch: str,
    mlflow_uri: str,
) -> None:
    model, trigger = unique("wine_katib"), unique("evt")
    policies = write_policy(tmp_path / "policies", model, tuned_training(timeout="1s"))
    tuner = KatibTuner(objects(cluster), "registry.example.com/ml/mlcd:test", {})
    wired = ports(settings, policies, orchestrator, tuner, training_jobs.NoTrainingJobs())

    async with kubeflow_api.KatibController(cluster, {}) as katib:
        katib.hold = True
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired, timeout_s=60)

    experiment = tuning.kube_name(decisions.run_name(model, trigger))
    assert "did not finish within 0:00:01" in outcome["reason"] and experiment in outcome["reason"]
    assert ("delete", "experiments", experiment) in cluster.writes
    assert cluster.get("experiments", NS, experiment) is None
    assert await emitted(engine, events.TrainingStarted) == []


async def test_an_embedded_tuned_retrain_runs_optuna_trials_as_local_pipeline_runs(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    batch: str,
    mlflow_uri: str,
) -> None:
    model, trigger = unique("wine_optuna"), unique("evt")
    policies = write_policy(
        tmp_path / "policies", model, tuned_training(algorithm="random", max_trials=2, parallel_trials=2)
    )
    tuner = optuna_tuner.OptunaTuner(
        settings.home,
        {
            "MLCD_HOME": str(settings.home.resolve()),
            "MLCD_PIPELINES_DIR": str(REPO / "pipelines"),
            "MLCD_MLFLOW_TRACKING_URI": mlflow_uri,
        },
    )
    wired = ports(settings, policies, orchestrator, tuner, training_jobs.NoTrainingJobs())
    try:
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired)
    finally:
        await tuner.close()

    experiment = tuning.kube_name(decisions.run_name(model, trigger))
    state = json.loads((settings.home / "tuning" / f"{experiment}.json").read_text())
    assert state["state"] == "SUCCEEDED" and len(state["trials"]) == 2, state
    best = max(state["trials"], key=lambda t: t["metrics"]["accuracy"])
    assert outcome["tuning_experiment"] == experiment and outcome["tuning_best_trial"] == best["name"]
    assert outcome["tuned_parameters"] == best["parameters"]
    version = MlflowClient(tracking_uri=mlflow_uri).get_model_version(model, outcome["model_version"])
    params = MlflowClient(tracking_uri=mlflow_uri).get_run(str(version.run_id)).data.params
    assert params["n_estimators"] == str(best["parameters"]["n_estimators"])
    assert version.tags["mlcd.tuning.experiment"] == experiment
    assert outcome["metrics"]["accuracy"] == best["metrics"]["accuracy"]
    # Each trial was a local pipeline run of its own, recorded under MLCD_HOME/runs.
    assert {t["name"] for t in state["trials"]} <= {p.stem for p in (settings.home / "runs").glob("*.json")}


def test_a_warm_start_enqueues_the_previous_experiments_best_trials_first(tmp_path: Path) -> None:
    import optuna

    from mlcd.policy.schema import Tuning

    policy = Tuning.model_validate(tuned_training(algorithm="tpe", parallel_trials=2)["tuning"])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'wine.db'}")
    space = {p.name: optuna_tuner.distribution(p) for p in policy.parameters}
    for study_name, results in (("exp-1", ((1, 0.99),)), ("exp-2", ((1, 0.71), (21, 0.97), (11, 0.93)))):
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
        for n_estimators, accuracy in results:
            study.enqueue_trial({"n_estimators": n_estimators})
            study.tell(study.ask(space), accuracy)
    current = optuna.create_study(study_name="exp-3", storage=storage, direction="maximize")

    assert optuna_tuner._warm_start(current, storage, policy) == "exp-2"  # the newest, not the best

    first, second, third = current.ask(space), current.ask(space), current.ask(space)
    assert [first.params, second.params] == [{"n_estimators": 21}, {"n_estimators": 11}]
    assert third.number == 2  # then the sampler explores


async def test_a_pytorchjob_run_is_submitted_once_followed_and_its_registered_version_found(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    cluster: kubeflow_api.KubeflowApi,
    batch: str,
    mlflow_uri: str,
) -> None:
    model, trigger = unique("wine_job"), unique("evt")
    args = [
        "--data-uri", "${parameters.data_uri}", "--tracking-uri", "${parameters.mlflow_tracking_uri}",
        "--model-name", "${parameters.model_name}", "--run-name", "${parameters.run_name}",
        "--n-estimators", "${parameters.n_estimators}",
    ]  # fmt: skip
    container = {
        "name": "pytorch",
        "image": "registry.example.com/ml/wine-train:1",
        "command": ["python", str(JOB_SCRIPT)],
        "args": args,
    }
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {"spec": {"containers": [container]}},
                }
            }
        },
    }
    policies = write_policy(
        tmp_path / "policies", model, {"backend": "job", "job": job, "parameters": {"n_estimators": 15}}
    )
    jobs = training_jobs.TrainingJobRunner(objects(cluster))
    wired = ports(settings, policies, orchestrator, optuna_tuner.OptunaTuner(settings.home, {}), jobs)

    async with kubeflow_api.JobController(cluster, {}):
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired, timeout_s=180)

    run_name = decisions.run_name(model, trigger)
    name = tuning.kube_name(run_name)
    assert [w for w in cluster.writes if w[1] == "pytorchjobs"] == [("create", "pytorchjobs", name)]
    assert cluster.refused == []
    created = cluster.get("pytorchjobs", NS, name)
    assert created is not None
    conditions = [c["type"] for c in created["status"]["conditions"]]
    assert conditions == ["Created", "Running", "Succeeded"]
    assert "model_version" in outcome, outcome
    version = MlflowClient(tracking_uri=mlflow_uri).get_model_version(model, outcome["model_version"])
    assert version.tags["mlcd.run_name"] == run_name
    version_run = MlflowClient(tracking_uri=mlflow_uri).get_run(str(version.run_id))
    assert version_run.data.params["n_estimators"] == "15"  # the policy's parameter reached the job
    assert outcome["metrics"]["accuracy"] == version_run.data.metrics["accuracy"] > 0.8
    [started] = await emitted(engine, events.TrainingStarted)
    assert started["run_id"] == f"pytorchjobs/{name}"


async def test_a_trainjob_past_its_timeout_is_deleted_and_the_run_fails(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    cluster: kubeflow_api.KubeflowApi,
    batch: str,
) -> None:
    model, trigger = unique("wine_job"), unique("evt")
    job = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {
                "command": ["python", str(JOB_SCRIPT)],
                "args": ["--data-uri", "${parameters.data_uri}"],
            },
        },
    }
    policies = write_policy(tmp_path / "policies", model, {"backend": "job", "job": job, "timeout": "1s"})
    jobs = training_jobs.TrainingJobRunner(objects(cluster))
    wired = ports(settings, policies, orchestrator, optuna_tuner.OptunaTuner(settings.home, {}), jobs)

    async with kubeflow_api.JobController(cluster, {}) as controller:
        controller.hold = True
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired, timeout_s=60)

    name = tuning.kube_name(decisions.run_name(model, trigger))
    assert outcome["reason"] == "run did not finish within 0:00:01"
    assert ("delete", "trainjobs", name) in cluster.writes
    assert cluster.get("trainjobs", NS, name) is None


async def test_a_job_manifest_the_crd_schema_refuses_fails_the_run_before_anything_is_created(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    cluster: kubeflow_api.KubeflowApi,
    batch: str,
) -> None:
    model = unique("wine_job")
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": "one"}}},
    }
    policies = write_policy(tmp_path / "policies", model, {"backend": "job", "job": job})
    wired = ports(
        settings,
        policies,
        orchestrator,
        optuna_tuner.OptunaTuner(settings.home, {}),
        training_jobs.TrainingJobRunner(objects(cluster)),
    )

    await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=unique("evt"))

    [failed] = await emitted(engine, events.TrainingFailed)
    assert "refusing to create an invalid PyTorchJob" in failed["reason"]
    assert "replicas" in failed["reason"]
    assert cluster.writes == []


@pytest.mark.parametrize("rejected", [False, True])
async def test_after_rule_miss_tunes_only_after_a_candidate_that_failed_a_rule(
    rejected: bool, tmp_path: Path, engine: AsyncEngine, settings: Settings, cluster: kubeflow_api.KubeflowApi
) -> None:
    from mlcd.adapters.kfp import KfpClientOrchestrator
    from mlcd.store import outbox as journal
    from mlcd.store import training
    from tests.fakes import kfp_api

    model = unique("wine_miss")
    policies = write_policy(tmp_path / "policies", model, tuned_training(when="after_rule_miss"))
    earlier = training.Trigger(model, unique("evt"), "s3://landing/old.csv", "data validated")
    async with engine.begin() as conn:  # the model's last run registered version 3
        name = decisions.run_name(model, earlier.event_id)
        await training.record_intent(conn, training.intended_run(name, earlier, "wine_quality", timedelta(0)))
        await training.record_submitted(conn, name, "run-1", "v1", datetime.now(UTC))
        await training.record_finished(conn, name, "SUCCEEDED", "", "3")
        failed_rule = events.RuleOutcome(
            name="accuracy_floor", expression="candidate.metrics.accuracy >= 0.8", passed=False
        )
        verdict = events.PromotionRejected(
            model=model, model_version="3", reason="rule failed", rules=[failed_rule]
        )
        if rejected:
            await journal.add(conn, [events.new_event(verdict, source="mlcd.gatekeeper")], sent=True)
    with kfp_api.serve() as fake:
        kfp_orchestrator = KfpClientOrchestrator(fake.url, timeout_s=5)
        package = tmp_path / "package.yaml"
        package.write_text("pipelineInfo:\n  name: wine-quality\n")
        await kfp_orchestrator.publish("wine_quality", "0123abcd", package)
        tuner = KatibTuner(objects(cluster), "registry.example.com/ml/mlcd:test", {})
        wired = ports(settings, policies, kfp_orchestrator, tuner, training_jobs.NoTrainingJobs())
        async with kubeflow_api.KatibController(cluster, {}) as katib:
            katib.hold = True
            trigger = unique("evt")
            await service_harness.deliver(
                engine, SERVICE, validated(model, "s3://landing/new.csv"), wired, event_id=trigger
            )
            created_runs = [r["runtime_config"]["parameters"] for r in fake.runs.values()]

    experiment = tuning.kube_name(decisions.run_name(model, trigger))
    if rejected:  # tuning first: an experiment, and no training run yet
        assert [w for w in cluster.writes if w[1] == "experiments"] == [("create", "experiments", experiment)]
        assert created_runs == []
    else:  # trained at once with the policy's parameters
        assert cluster.writes == []
        [started] = await emitted(engine, events.TrainingStarted)
        assert started["tuning_experiment"] == "" and started["tuned_parameters"] == {}
        assert [r["n_estimators"] for r in created_runs] == [50]


async def test_an_embedded_experiment_past_its_timeout_stops_its_running_trials(
    tmp_path: Path,
    engine: AsyncEngine,
    settings: Settings,
    orchestrator: LocalOrchestrator,
    mlflow_uri: str,
) -> None:
    model, trigger = unique("wine_optuna"), unique("evt")
    # A batch that never arrives: a FIFO no one writes, so the first trial's load-batch blocks and the
    # trial is surely running when the timeout comes (a trial that ends just before it left none running)
    never_written = tmp_path / "never-written.csv"
    os.mkfifo(never_written)
    batch = never_written.as_uri()
    search = tuned_training(algorithm="random", max_trials=10, parallel_trials=1, timeout="15s")
    policies = write_policy(tmp_path / "policies", model, search)
    home = str(settings.home.resolve())
    tuner = optuna_tuner.OptunaTuner(
        settings.home,
        {
            "MLCD_HOME": home,
            "MLCD_PIPELINES_DIR": str(REPO / "pipelines"),
            "MLCD_MLFLOW_TRACKING_URI": mlflow_uri,
        },
    )
    wired = ports(settings, policies, orchestrator, tuner, training_jobs.NoTrainingJobs())
    try:
        await service_harness.deliver(engine, SERVICE, validated(model, batch), wired, event_id=trigger)
        outcome = await finished(engine, wired, timeout_s=120)
    finally:
        await tuner.close()

    experiment = tuning.kube_name(decisions.run_name(model, trigger))
    assert "did not finish within 0:00:15" in outcome["reason"]
    state = json.loads((settings.home / "tuning" / f"{experiment}.json").read_text())
    assert (state["state"], state["message"]) == ("FAILED", "cancelled by mlcd")
    trial_runs = [json.loads(p.read_text()) for p in (settings.home / "runs").glob(f"{experiment}-*.json")]
    assert [r["state"] for r in trial_runs] == ["CANCELED"]  # the running trial's pipeline run was stopped
