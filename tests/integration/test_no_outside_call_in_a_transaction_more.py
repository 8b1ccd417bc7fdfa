"""No outside call inside a store transaction, continued: the paths test_no_outside_call_in_a_transaction
does not drive (tuned retraining on the embedded Optuna tuner, Training Operator jobs, Feast feature
repositories, the deployer's guard window and abort, gate expiry, and the HTTP routers that write to the
store and call outside systems).

As there, each story runs on SQLite and on PostgreSQL with the adapters the other integration tests use,
every port is wrapped by `TransactionGuard`, and each test names the calls its story must have made, so a
story that stops reaching an outside system fails here rather than passing without looking.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI
from kubernetes import client as kube_client
from mlflow import MlflowClient
from sklearn.datasets import load_wine
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, events
from mlcd import http as mlcd_http
from mlcd.adapters import feast, objectstore
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.adapters.kube import CustomObjects
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import LogNotifier
from mlcd.adapters.optuna_tuner import OptunaTuner
from mlcd.adapters.prometheus import LocalAnalysis
from mlcd.adapters.training_jobs import NoTrainingJobs, TrainingJobRunner
from mlcd.builder import handlers as builder
from mlcd.config import Settings
from mlcd.deployer import app as deployer_app
from mlcd.deployer import handlers as deployer
from mlcd.gatekeeper import app as gatekeeper_app
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.local.serving import LocalServing, PredictionFailed
from mlcd.store import gates, rollouts, training
from mlcd.store.tables import outbox as outbox_table
from mlcd.trainer import decisions, tuning
from mlcd.trainer import handlers as trainer
from tests.conftest import REPO, unique
from tests.fakes import kfp_api, kubeflow_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.integration.test_no_outside_call_in_a_transaction import (
    COMMIT,
    PROJECT,
    _policies,
    _register_metric_version,
    assert_no_call_inside_a_transaction,
    deliver,
)
from tests.support import flows, service_harness
from tests.support.serving_models import GOOD_ROWS, SHIFTED_ROWS
from tests.support.transaction_guard import TransactionGuard


@pytest.fixture
def guard(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[TransactionGuard]:
    """The guard on the test's engine, with Feast's runs (no port: module functions the builder looks up
    in `mlcd.adapters.feast`) wrapped where the builder finds them; each still does its real work."""
    guard = TransactionGuard(engine)
    for name in ("prepare", "plan", "apply"):
        monkeypatch.setattr(feast, name, guard.watch_call(f"feast.{name}", getattr(feast, name)))
    yield guard
    guard.close()


async def _emitted(engine: AsyncEngine, model: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) of each event journaled for `model`, in order; kind is the type's last part."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.event_type, outbox_table.c.value)
            .where(outbox_table.c.subject == model)
            .order_by(outbox_table.c.seq)
        )
        return [(r.event_type.split(".")[2], json.loads(r.value)) for r in rows]


async def _kinds(engine: AsyncEngine, model: str) -> list[str]:
    return [kind for kind, _ in await _emitted(engine, model)]


# --- trainer: tuned retraining on the embedded Optuna tuner ------------------------------------------------


def _register_run_version(
    mlflow_uri: str, model: str, run_name: str, accuracy: float, *, alias: str | None = None
) -> str:
    """What a pipeline run (a trial's or a candidate's) does on a cluster: a version with its metrics,
    tagged with the run's name (and, for a candidate, behind the run's alias)."""
    mlflow = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run = mlflow.create_run(mlflow.create_experiment(unique("exp")))
    mlflow.log_metric(run.info.run_id, "accuracy", accuracy)
    mlflow.set_terminated(run.info.run_id)
    try:
        mlflow.create_registered_model(model)
    except Exception:  # MlflowException RESOURCE_ALREADY_EXISTS
        pass
    version = mlflow.create_model_version(
        model,
        f"runs:/{run.info.run_id}/model",
        run.info.run_id,
        tags={decisions.RUN_NAME_TAG: run_name},
    ).version
    if alias is not None:
        mlflow.set_registered_model_alias(model, alias, version)
    return str(version)


async def _all_due(engine: AsyncEngine) -> None:
    """Every active run is due for a look now (the follower's pauses grow to minutes)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(training.training_runs).values(next_check_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _tuned(**tuning_fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "wine_quality",
        "parameters": {"n_estimators": 50},
        "tuning": {
            "objective": {"metric": "accuracy", "type": "maximize"},
            "algorithm": "random",
            "parameters": [{"name": "n_estimators", "type": "int", "min": 1, "max": 21, "step": 10}],
            "max_trials": 1,
            "parallel_trials": 1,
            **tuning_fields,
        },
    }


async def test_a_tuned_retrain_on_the_embedded_tuner_runs_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str
) -> None:
    """One model's tuning experiment succeeds (its trial a run on the KFP API, whose version the test
    registers as the pipeline would) and its best parameters train the candidate; another's outlives its
    timeout and is cancelled. The Optuna worker and its trials are real processes."""
    tuned, late = unique("wine_tuned"), unique("wine_late")
    folder = tmp_path / "policies"
    _policies(folder, tuned, {"training": _tuned()})
    policies = _policies(folder, late, {"training": _tuned(timeout="1s")})
    tuned_trigger, late_trigger = unique("evt"), unique("evt")
    tuned_run = decisions.run_name(tuned, tuned_trigger)
    tuned_experiment = tuning.kube_name(tuned_run)
    with kfp_api.serve() as kfp:
        package = tmp_path / "package.yaml"
        package.write_text("pipelineInfo:\n  name: wine-quality\n")
        orchestrator = KfpClientOrchestrator(kfp.url, timeout_s=10)
        await orchestrator.publish("wine_quality", "0123abcd", package)
        home = tmp_path / "home"
        settings = Settings(home=home, mlflow_tracking_uri=mlflow_uri, kfp_host=kfp.url)
        # Each trial runs the pipeline on the KFP API and reads its metrics back from MLflow, as on a cluster.
        tuner = OptunaTuner(
            home,
            {
                "MLCD_HOME": str(home.resolve()),
                "MLCD_KFP_HOST": kfp.url,
                "MLCD_MLFLOW_TRACKING_URI": mlflow_uri,
            },
        )
        ports = guard.watch(
            {
                "settings": settings,
                "policies": policies,
                "orchestrator": orchestrator,
                "registry": MlflowRegistry(mlflow_uri),
                "objects": objectstore.build(settings),
                "tuner": tuner,
                "jobs": NoTrainingJobs(),
            }
        )
        finished: set[str] = set()

        async def pipelines_run() -> None:
            """What KFP and the pipeline do: each run of the tuned model (its trials, then its candidate)
            registers a version and succeeds; the late model's trials never end."""
            for run in list(kfp.runs.values()):
                name = run["display_name"]
                if run["state"] != "RUNNING" or name in finished:
                    continue
                if name.startswith(f"{tuned_experiment}-"):  # a trial: n_estimators decides its score
                    trees = run["runtime_config"]["parameters"]["n_estimators"]
                    await asyncio.to_thread(
                        _register_run_version,
                        mlflow_uri,
                        tuning.trials_model(tuned),
                        name,
                        0.8 + trees / 1000,
                    )
                elif name == tuned_run:
                    alias = decisions.run_alias(name)
                    await asyncio.to_thread(_register_run_version, mlflow_uri, tuned, name, 0.93, alias=alias)
                else:
                    continue
                finished.add(name)
                kfp.finish(run["run_id"], "SUCCEEDED")

        try:
            for model, trigger in ((tuned, tuned_trigger), (late, late_trigger)):
                validated = events.DataValidated(
                    model=model, uri=f"s3://landing/{model}/1.csv", rows=9, suite="s", result_uri="r"
                )
                await service_harness.deliver(engine, trainer.SERVICE, validated, ports, event_id=trigger)
            assert kfp.created_runs() == []  # tuning first: no training run yet

            async def both_reported() -> bool:
                await pipelines_run()
                await _all_due(engine)
                await service_harness.tick(engine, trainer.SERVICE, ports)
                await asyncio.sleep(0.2)
                return "succeeded" in await _kinds(engine, tuned) and "failed" in await _kinds(engine, late)

            await flows.eventually(both_reported, "the tuned run reported and the late experiment failed", 90)
        finally:
            await tuner.close()

    [(_, succeeded)] = [e for e in await _emitted(engine, tuned) if e[0] == "succeeded"]
    assert succeeded["tuning_experiment"] == tuned_experiment and succeeded["tuned_parameters"], succeeded
    trained_with = kfp.run_named(tuned_run)["runtime_config"]["parameters"]
    assert trained_with["n_estimators"] == succeeded["tuned_parameters"]["n_estimators"]  # the best trial's
    [(_, failed)] = [e for e in await _emitted(engine, late) if e[0] == "failed"]
    assert "did not finish within 0:00:01" in failed["reason"], failed
    assert_no_call_inside_a_transaction(
        guard,
        {
            "tuner.result",
            "tuner.start",
            "tuner.cancel",
            "orchestrator.latest",
            "orchestrator.find_run",
            "orchestrator.submit",
            "orchestrator.get_run",
            "registry.version_by_alias",
            "registry.delete_alias",
            "registry.set_version_tags",
        },
    )


# --- trainer: Training Operator jobs -----------------------------------------------------------------------

NS = "kubeflow-ml"
JOB_SCRIPT = """
import sys
from mlflow import MlflowClient

tracking_uri, model, run_name = sys.argv[1:4]
mlflow = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
run = mlflow.create_run(mlflow.create_experiment(run_name))
mlflow.log_metric(run.info.run_id, "accuracy", 0.92)
mlflow.set_terminated(run.info.run_id)
try:
    mlflow.create_registered_model(model)
except Exception:
    pass
mlflow.create_model_version(
    model, f"runs:/{run.info.run_id}/model", run.info.run_id, tags={"mlcd.run_name": run_name}
)
"""


def _pytorch_job(script: Path) -> dict[str, Any]:
    container = {
        "name": "pytorch",
        "image": "registry.example.com/ml/wine-train:1",
        "command": ["python", str(script)],
        "args": ["${parameters.mlflow_tracking_uri}", "${parameters.model_name}", "${parameters.run_name}"],
    }
    return {
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


async def test_training_jobs_are_submitted_followed_and_deleted_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str
) -> None:
    """A PyTorchJob runs (the stand-in controller runs its container, which registers its version) and is
    reported; another outlives training.timeout and is deleted."""
    done, held = unique("wine_job"), unique("wine_held")
    script = tmp_path / "train.py"
    script.write_text(JOB_SCRIPT)
    job = _pytorch_job(script)
    folder = tmp_path / "policies"
    _policies(folder, done, {"training": {"backend": "job", "job": job}})
    policies = _policies(folder, held, {"training": {"backend": "job", "job": job, "timeout": "1s"}})
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=mlflow_uri)

    async with kubeflow_api.api_running() as cluster, kubeflow_api.JobController(cluster, {}) as controller:
        objects = CustomObjects(
            lambda: kube_client.ApiClient(kube_client.Configuration(host=cluster.url)), NS, timeout_s=10
        )
        ports = guard.watch(
            {
                "settings": settings,
                "policies": policies,
                "orchestrator": None,  # a job policy runs no pipeline
                "registry": MlflowRegistry(mlflow_uri),
                "objects": objectstore.build(settings),
                "tuner": OptunaTuner(settings.home, {}),
                "jobs": TrainingJobRunner(objects),
            }
        )

        async def reported(model: str, kind: str) -> bool:
            await _all_due(engine)
            await service_harness.tick(engine, trainer.SERVICE, ports)
            await asyncio.sleep(0.2)
            return kind in await _kinds(engine, model)

        for model, outcome in ((done, "succeeded"), (held, "failed")):
            controller.hold = model == held  # the held job is accepted and Running, never run
            validated = events.DataValidated(
                model=model, uri=f"s3://landing/{model}/1.csv", rows=9, suite="s", result_uri="r"
            )
            await deliver(engine, trainer.SERVICE, validated, ports)
            await flows.eventually(lambda: reported(model, outcome), f"{model} reported {outcome}", 90)  # noqa: B023

    [(_, failed)] = [e for e in await _emitted(engine, held) if e[0] == "failed"]
    assert failed["reason"] == "run did not finish within 0:00:01"
    assert [w[0] for w in cluster.writes if w[1] == "pytorchjobs"] == ["create", "create", "delete"]
    assert_no_call_inside_a_transaction(
        guard,
        {
            "jobs.submit_job",
            "jobs.get_run",
            "jobs.terminate_run",
            "registry.version_by_alias",
            "registry.version_by_tag",
            "registry.delete_alias",
        },
    )


# --- builder: Feast feature repositories -------------------------------------------------------------------

FEAST_BIN = REPO / ".venv-feast/bin/feast"
FIRST = "f1f2f3f4f5f60718293a4b5c6d7e8f9012345678"
SECOND = "e1e2e3e4e5f60718293a4b5c6d7e8f9012345678"
DEFINITIONS = "features/wine_quality/wine_features.py"


@pytest.mark.skipif(not FEAST_BIN.exists(), reason="no .venv-feast: run `make feast-venv`")
async def test_the_builder_applies_and_plans_features_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push applies the feature repository with real Feast; a merge request (its diff asked of GitLab)
    gets the plan against it as a note and a commit status."""
    frame = load_wine(as_frame=True).frame.drop(columns="target")
    frame.insert(0, "wine_id", range(len(frame)))
    frame["event_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC")
    frame.to_parquet(tmp_path / "wine_features.parquet")
    monkeypatch.setenv("WINE_FEATURES_URI", str(tmp_path / "wine_features.parquet"))
    folder = REPO / "features/wine_quality"
    shipped = {f"features/wine_quality/{p.name}": p.read_text() for p in folder.iterdir() if p.is_file()}
    fewer = shipped[DEFINITIONS].replace(
        "schema=[Field(name=name, dtype=Float64) for name in MEASUREMENTS]",
        "schema=[Field(name=name, dtype=Float64) for name in MEASUREMENTS if name != 'ash']",
    )
    assert fewer != shipped[DEFINITIONS]
    policy = {
        "code": {"project": PROJECT, "paths": ["pipelines/wine_quality/**"], "branch": "main"},
        "features": {"path": "features/wine_quality", "retrain": True},
    }
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT, files={"README.md": "wine"})
        gitlab.set_files(PROJECT, FIRST, {"README.md": "wine", **shipped})
        gitlab.set_files(PROJECT, SECOND, {"README.md": "wine", **shipped, DEFINITIONS: fewer})
        gitlab.add_merge_request(PROJECT, 7, sha=SECOND)
        ports = guard.watch(
            {
                "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test", feast_bin=FEAST_BIN),
                "policies": _policies(tmp_path / "policies", "wine_quality", policy),
                "code_host": GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10),
                "orchestrator": None,  # a push touching only features/ publishes no pipeline
            }
        )
        pushed = events.CodePushed(
            project=PROJECT,
            project_id=1,
            ref="refs/heads/main",
            before="0" * 39 + "1",
            after=FIRST,
            author=events.GitUser(username="alice"),
            changed_paths=[DEFINITIONS],
        )
        applied = await deliver(engine, builder.SERVICE, pushed, ports)
        opened = events.MergeRequestChanged(
            project=PROJECT,
            project_id=1,
            iid=7,
            action="open",
            source_branch="features",
            target_branch="main",
            commit=SECOND,
            author=events.GitUser(username="bob"),
        )  # no changed paths: the builder asks GitLab for the diff
        assert await deliver(engine, builder.SERVICE, opened, ports) == []
        [note] = gitlab.notes(PROJECT, 7)

    assert [type(p) for p in applied] == [events.FeaturesApplied]
    assert "Updated feature view wine_chemistry" in note["body"]
    assert_no_call_inside_a_transaction(
        guard,
        {
            "code_host.set_commit_status",
            "code_host.fetch_tree",
            "code_host.merge_request_paths",
            "code_host.upsert_merge_request_note",
            "feast.prepare",
            "feast.apply",
            "feast.plan",
        },
    )


# --- deployer: the post-promotion guard window and on-call's abort ----------------------------------------


class _Rollouts:
    """The deployer's handlers and timer over local serving and MLflow, driven by the test."""

    def __init__(self, engine: AsyncEngine, model: str, ports: dict[str, Any], serving: LocalServing) -> None:
        self.engine, self.model, self.ports, self.serving = engine, model, ports, serving

    async def deliver(self, payload: events.Payload) -> None:
        await deliver(self.engine, deployer.SERVICE, payload, self.ports)

    async def tick(self, rows: list[list[float]]) -> None:
        """Traffic of `rows` on the model, then one tick with every rollout's analysis due."""
        for _ in range(20):
            try:
                await self.serving.predict(self.model, rows)
            except PredictionFailed:
                pass
        async with self.engine.begin() as conn:
            await conn.execute(
                update(rollouts.rollouts).values(next_analysis_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        await service_harness.tick(self.engine, deployer.SERVICE, self.ports)

    async def phase(self) -> str | None:
        async with self.engine.connect() as conn:
            running = await rollouts.running(conn, self.model)
        return None if running is None else running.phase


async def _rollouts(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str, model: str, guarded: str
) -> _Rollouts:
    serving = LocalServing(tmp_path / "home", mlflow_uri)
    registry = MlflowRegistry(mlflow_uri)
    await registry.set_alias(model, "champion", "1")
    await serving.promote(model, "1", (await registry.get_version(model, "1")).source)
    rollout = {
        "mode": "serverless",
        "steps": [10, 50, 100],
        "interval": "30s",
        "guard": guarded,
        "thresholds": {"max_error_rate": 0.05, "max_p95_latency_s": 2.0, "min_requests": 1},
    }
    policy = {
        "serving_name": model.replace("_", "-"),
        "rollout": rollout,
        "training": {"pipeline": "wine_quality"},
    }
    policies = _policies(tmp_path / "policies", model, policy)
    ports = guard.watch(
        {"policies": policies, "registry": registry, "serving": serving, "analysis": LocalAnalysis(serving)}
    )
    return _Rollouts(engine, model, ports, serving)


async def test_the_guard_window_and_an_abort_act_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str, served_model: str
) -> None:
    """Version 2 passes its post-promotion guard window; version 3 fails its own and is rolled back; a
    rollout of version 4 is aborted by on-call (recorded as the API records it) and undone at the tick."""
    local = await _rollouts(engine, guard, tmp_path, mlflow_uri, served_model, guarded="1h")
    model = local.model

    await local.deliver(events.PromotionApproved(model=model, model_version="2"))
    for _ in range(2):
        await local.tick(GOOD_ROWS)
    assert await local.phase() == rollouts.GUARDING
    await local.tick(GOOD_ROWS)  # the window is still open: analysed, not ended
    assert "rollout_succeeded" not in await _kinds(engine, model)
    async with engine.begin() as conn:
        await conn.execute(
            update(rollouts.rollouts).values(guard_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    await local.tick(GOOD_ROWS)
    assert (await _kinds(engine, model)).count("rollout_succeeded") == 1

    await local.deliver(events.PromotionApproved(model=model, model_version="3"))
    for _ in range(2):
        await local.tick(GOOD_ROWS)
    assert await local.phase() == rollouts.GUARDING
    await local.tick(SHIFTED_ROWS)  # after promotion, data version 3 cannot handle
    [(_, guard_failed)] = [e for e in await _emitted(engine, model) if e[0] == "rolled_back"]
    assert guard_failed["reason"].startswith("post-promotion guard:"), guard_failed

    await local.deliver(events.PromotionApproved(model=model, model_version="4"))
    async with engine.begin() as conn:
        running = await rollouts.running(conn, model)
        assert running is not None and running.version == "4"
        await rollouts.request(conn, running, "abort", datetime.now(UTC))
    await local.tick(GOOD_ROWS)
    aborted = [e for e in await _emitted(engine, model) if e[0] == "rolled_back"][-1][1]
    assert (aborted["from_version"], aborted["reason"]) == ("4", "aborted by on-call")
    assert (await local.ports["registry"].version_by_alias(model, "champion")).version == "2"

    assert_no_call_inside_a_transaction(
        guard,
        {
            "registry.get_version",
            "registry.version_by_alias",
            "registry.set_alias",
            "registry.set_version_tags",
            "serving.set_canary",
            "serving.promote",
            "serving.rollback",
            "serving.state",
            "analysis.evaluate",
        },
    )


# --- gatekeeper: gate decisions through the API, and gate expiry ------------------------------------------

IDENTITIES = {
    "token-olivia": auth.Identity("olivia", frozenset({"oncall"})),
    "token-dev": auth.Identity("dev", frozenset({"developers"})),
}


def _identify(presented: str | None) -> auth.Identity | None:
    return IDENTITIES.get(presented or "")


def _bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer token-{who}"}


async def test_gate_decisions_through_the_api_and_gate_expiry_stay_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str
) -> None:
    """Through /api/v1/gates: a gate approved, the next rejected, a third refused (409) because the champion
    changed and the candidate fails against it; that one then expires on the timer. The registry follows
    every decision (the gatekeeper's own handlers of the events the API and the timer emitted)."""
    model = unique("churn")
    champion = _register_metric_version(mlflow_uri, model, 0.90)
    candidates = [_register_metric_version(mlflow_uri, model, a) for a in (0.91, 0.92, 0.93)]
    better = _register_metric_version(mlflow_uri, model, 0.99)
    MlflowClient(tracking_uri=mlflow_uri).set_registered_model_alias(model, "champion", champion)
    policy = {
        "code": {"project": PROJECT, "branch": "main"},
        "promotion": {
            "rules": [
                {"name": "no_regression", "expr": "candidate.metrics.accuracy >= champion.metrics.accuracy"}
            ]
        },
        "approval": {"required": True, "count": 1, "groups": ["oncall"], "timeout": "1h"},
    }
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)
        gitlab.add_merge_request(PROJECT, 7, sha=COMMIT, merge_commit_sha=COMMIT, state="merged")
        policies = _policies(tmp_path / "policies", model, policy)
        ports = guard.watch(
            {
                "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test"),
                "policies": policies,
                "registry": MlflowRegistry(mlflow_uri),
                "serving": LocalServing(tmp_path / "serving", mlflow_uri),
                "code_host": GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10),
                "notifier": LogNotifier(),
            }
        )
        api = FastAPI()
        mlcd_http.install_error_handlers(api)
        api.include_router(
            gatekeeper_app.router(
                engine,
                None,
                policies,
                _identify,
                code_host=ports["code_host"],
                registry=ports["registry"],
            )
        )

        async def open_gate(version: str) -> str:
            trained = events.TrainingSucceeded(
                model=model,
                run_id=f"run-{version}",
                model_version=version,
                metrics={},
                data_uri="s3://landing/churn/1.csv",
                commit=COMMIT,
                author="alice",
            )
            [opened] = await deliver(engine, gatekeeper.SERVICE, trained, ports)
            assert isinstance(opened, events.GateOpened)
            return opened.gate_id

        async def follow_decisions(since: int) -> int:
            """The gatekeeper's handlers of the decisions journaled since `since` (the registry follows)."""
            decided = [e for e in await _emitted(engine, model) if e[0] in ("approved", "rejected")]
            for kind, data in decided[since:]:
                payload_type = events.PromotionApproved if kind == "approved" else events.PromotionRejected
                await deliver(engine, gatekeeper.SERVICE, payload_type.model_validate(data), ports)
            return len(decided)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://mlcd") as http:
            first = await open_gate(candidates[0])
            refused = await http.post(f"/api/v1/gates/{first}/approve", headers=_bearer("dev"))
            approved = await http.post(
                f"/api/v1/gates/{first}/approve", json={"reason": "looks right"}, headers=_bearer("olivia")
            )
            seen = await follow_decisions(0)
            second = await open_gate(candidates[1])
            rejected = await http.post(
                f"/api/v1/gates/{second}/reject", json={"reason": "not now"}, headers=_bearer("olivia")
            )
            seen = await follow_decisions(seen)
            third = await open_gate(candidates[2])
            MlflowClient(tracking_uri=mlflow_uri).set_registered_model_alias(model, "champion", better)
            stale = await http.post(f"/api/v1/gates/{third}/approve", headers=_bearer("olivia"))
            # The third gate's deadline passes with no decision: the timer expires it.
            async with engine.begin() as conn:
                await conn.execute(
                    update(gates.gates)
                    .where(gates.gates.c.id == third)
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
            assert _kinds_of(await service_harness.tick(engine, gatekeeper.SERVICE, ports)) == ["rejected"]
            await follow_decisions(seen)
            shown = (await http.get(f"/api/v1/gates/{third}", headers=_bearer("dev"))).json()

        assert (refused.status_code, approved.status_code, rejected.status_code) == (403, 200, 200)
        assert stale.status_code == 409 and "champion changed" in stale.json()["error"], stale.json()
        assert shown["state"] == "expired"
        assert len(gitlab.commit_comments(PROJECT, COMMIT)) >= 2

    tags = MlflowClient(tracking_uri=mlflow_uri).get_model_version(model, candidates[2]).tags
    assert tags["mlcd.decision"] == "rejected" and tags["mlcd.reason"] == "expired"
    assert_no_call_inside_a_transaction(
        guard,
        {
            "registry.get_version",
            "registry.version_by_alias",
            "registry.flavors",
            "registry.set_alias",
            "registry.set_version_tags",
            "code_host.merge_requests_of_commit",
            "code_host.post_commit_note",
        },
    )


def _kinds_of(emitted: list[events.Payload]) -> list[str]:
    return [p.type.split(".")[2] for p in emitted]


# --- deployer: on-call's rollout control through the API --------------------------------------------------


async def test_the_deployer_api_controls_rollouts_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str, served_model: str
) -> None:
    """Through /api/v1/models: pause, resume and promote a rollout; abort the next and retry it; roll back
    to a named version; ask for a retrain; read the status. The deployer acts on what the API recorded."""
    local = await _rollouts(engine, guard, tmp_path, mlflow_uri, served_model, guarded="0s")
    model = local.model
    api = FastAPI()
    mlcd_http.install_error_handlers(api)
    api.include_router(
        deployer_app.router(
            engine,
            None,
            local.ports["registry"],
            _identify,
            local.ports["policies"],
            local.ports["serving"],
        )
    )
    oncall = _bearer("olivia")
    base = f"/api/v1/models/{model}"

    async def handle_requests() -> None:
        """The deployer's handlers of what the API asked for (rollbacks, approvals of a retry)."""
        for kind, data in await _emitted(engine, model):
            if (kind, data) in handled:
                continue
            if kind == "rollback_requested":
                await local.deliver(events.RollbackRequested.model_validate(data))
            elif kind == "approved":
                await local.deliver(events.PromotionApproved.model_validate(data))
            handled.append((kind, data))

    handled: list[tuple[str, dict[str, Any]]] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://mlcd") as http:
        await local.deliver(events.PromotionApproved(model=model, model_version="2"))
        answers = [
            await http.post(f"{base}/rollout/pause", headers=oncall),
            await http.post(f"{base}/rollout/resume", headers=oncall),
            await http.post(f"{base}/rollout/promote", headers=oncall),
        ]
        await local.tick(GOOD_ROWS)
        assert (await local.ports["registry"].version_by_alias(model, "champion")).version == "2"
        await local.deliver(events.PromotionApproved(model=model, model_version="4"))
        answers.append(await http.post(f"{base}/rollout/abort", headers=oncall))
        await local.tick(GOOD_ROWS)
        answers.append(await http.post(f"{base}/rollout/retry", headers=oncall))
        await handle_requests()  # version 4 rolls out again
        answers.append(
            await http.post(f"{base}/rollback", json={"to_version": "1", "reason": "drift"}, headers=oncall)
        )
        await handle_requests()
        answers.append(
            await http.post(
                f"{base}/retrain",
                json={"reason": "fresh data", "data_uri": "s3://landing/wine/2.csv"},
                headers=oncall,
            )
        )
        status = await http.get(base, headers=oncall)

    assert [a.status_code for a in answers] == [202] * 7, [a.text for a in answers]
    assert status.status_code == 200 and status.json()["champion"] == "1", status.json()
    assert status.json()["serving"]["stable_version"] == "1"
    kinds = await _kinds(engine, model)
    assert kinds.count("rolled_back") == 2 and "retrain_requested" in kinds, kinds
    assert_no_call_inside_a_transaction(
        guard,
        {
            "registry.get_version",
            "registry.version_by_alias",
            "registry.set_alias",
            "registry.set_version_tags",
            "serving.set_canary",
            "serving.promote",
            "serving.rollback",
            "serving.state",
        },
    )
