"""No service calls an outside system while a store transaction is open (issue 12, DESIGN round two).

Each service's real handlers and timers are driven through a realistic stretch of the chain, on SQLite and
on PostgreSQL, with the adapters the other integration tests use: GitLab and the KFP API are the fakes of
tests/fakes, MLflow is a real server, serving is local serving with real predictions, the object store a
folder, chat webhooks and OpenLineage loopback receivers. Every port the composition root hands a handler
is wrapped by `TransactionGuard`, which follows the engine's transactions through SQLAlchemy's events and
records each port call made while one is open in the calling task; so are the outside calls that are no
ports (the pipeline compile, the Great Expectations run, chat posts), wrapped where the handler modules
look them up. Each test also names the calls its story must have made, so a story that stops reaching an
outside system fails here rather than passing without looking.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import notify, objectstore
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import LogNotifier
from mlcd.adapters.openlineage import OpenLineageExport
from mlcd.adapters.optuna_tuner import OptunaTuner
from mlcd.adapters.prometheus import LocalAnalysis
from mlcd.adapters.training_jobs import NoTrainingJobs
from mlcd.builder import handlers as builder
from mlcd.bus.memory import MemoryBus
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.deployer import handlers as deployer
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.lineage_export import handlers as lineage_export
from mlcd.local.serving import LocalServing, PredictionFailed
from mlcd.notifier import handlers as notifier
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import outbox, rollouts
from mlcd.store.tables import outbox as outbox_table
from mlcd.trainer import decisions
from mlcd.trainer import handlers as trainer
from mlcd.validator import batches, suite
from mlcd.validator import handlers as validator
from tests.conftest import REPO, unique
from tests.fakes import kfp_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import flows, service_harness
from tests.support.chat_receiver import ChatReceiver
from tests.support.lineage_receiver import LineageReceiver
from tests.support.serving_models import GOOD_ROWS, SHIFTED_ROWS
from tests.support.transaction_guard import TransactionGuard

PROJECT = "ml/wine-quality"
COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
MR_COMMIT = "c3d4e5f60718293a4b5c6d7e8f9012345678a1b2"


@pytest.fixture
def guard(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[TransactionGuard]:
    """The guard on the test's engine, with the outside calls that are no ports wrapped where the handler
    modules look them up (observed, not replaced: each still does its real work)."""
    guard = TransactionGuard(engine)
    monkeypatch.setattr(builder, "compile_in_child", guard.watch_call("compile", builder.compile_in_child))
    monkeypatch.setattr(suite, "load", guard.watch_call("expectations.load", suite.load))
    monkeypatch.setattr(suite, "run", guard.watch_call("expectations.run", suite.run))
    monkeypatch.setattr(batches, "parse", guard.watch_call("batch.parse", batches.parse))
    monkeypatch.setattr(notify, "post", guard.watch_call("chat.post", notify.post))
    yield guard
    guard.close()


def assert_no_call_inside_a_transaction(guard: TransactionGuard, expected: set[str]) -> None:
    assert not guard.violations, guard.report()
    missing = expected - guard.called()
    assert not missing, f"the story never reached {sorted(missing)}; it reached {sorted(guard.called())}"


async def deliver(
    engine: AsyncEngine, service: ServiceSpec, payload: events.Payload, ports: dict[str, Any]
) -> list[events.Payload]:
    return await service_harness.deliver(engine, service, payload, ports, event_id=unique("evt"))


def _policies(folder: Path, model: str, policy: dict[str, Any]) -> PolicyBook:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(yaml.safe_dump({"model": model, **policy}))
    return PolicyBook(folder)


def _types(emitted: list[events.Payload]) -> list[type[events.Payload]]:
    return [type(p) for p in emitted]


# --- builder ---------------------------------------------------------------------------------------------


async def test_the_builder_compiles_and_reports_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path
) -> None:
    sources = {
        f"pipelines/wine_quality/{p.name}": p.read_bytes()
        for p in (REPO / "pipelines/wine_quality").glob("*.py")
    }
    policy = {
        "code": {"project": PROJECT, "paths": ["pipelines/wine_quality/**"], "branch": "main"},
        "training": {"pipeline": "wine_quality"},
    }
    with FakeGitLab() as gitlab, kfp_api.serve() as kfp:
        gitlab.add_project(PROJECT, files=sources)
        gitlab.add_merge_request(
            PROJECT, 12, sha=MR_COMMIT, changed_paths=["pipelines/wine_quality/pipeline.py"]
        )
        ports = guard.watch(
            {
                "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test"),
                "policies": _policies(tmp_path / "policies", "wine_quality", policy),
                "code_host": GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10),
                "orchestrator": KfpClientOrchestrator(kfp.url, timeout_s=10),
            }
        )
        pushed = events.CodePushed(
            project=PROJECT,
            project_id=1,
            ref="refs/heads/main",
            before="0" * 40,
            after=COMMIT,
            author=events.GitUser(username="alice"),
            changed_paths=["pipelines/wine_quality/pipeline.py"],
        )
        assert _types(await deliver(engine, builder.SERVICE, pushed, ports)) == [events.PipelinePublished]
        opened = events.MergeRequestChanged(
            project=PROJECT,
            project_id=1,
            iid=12,
            action="open",
            source_branch="tune",
            target_branch="main",
            commit=MR_COMMIT,
            author=events.GitUser(username="alice"),
        )  # no changed paths: the builder asks GitLab for the diff
        await deliver(engine, builder.SERVICE, opened, ports)
        assert gitlab.notes(PROJECT, 12)

    assert_no_call_inside_a_transaction(
        guard,
        {
            "code_host.set_commit_status",
            "code_host.fetch_tree",
            "code_host.merge_request_paths",
            "code_host.upsert_merge_request_note",
            "compile",
            "orchestrator.publish",
        },
    )


# --- validator -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine_batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """clean and corrupt CSV batches, cut by the pipeline folder's own script."""
    out = tmp_path_factory.mktemp("batches")
    script = REPO / "pipelines/wine_quality/make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    return {path.stem: path.read_bytes() for path in out.glob("*.csv")}


async def test_the_validator_reads_validates_and_stores_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, wine_batches: dict[str, bytes]
) -> None:
    repo = tmp_path / "repo"
    (repo / "pipelines/wine_quality").mkdir(parents=True)
    shutil.copy(REPO / "pipelines/wine_quality/expectations.json", repo / "pipelines/wine_quality")
    data = {
        "bucket": "landing",
        "prefix": "wine_quality/",
        "suite": "pipelines/wine_quality/expectations.json",
    }
    policies = _policies(repo / "policies", "wine_quality", {"data": data})
    settings = Settings(
        home=tmp_path / "home", policies_dir=repo / "policies", pipelines_dir=repo / "pipelines"
    )
    objects = objectstore.build(settings)
    ports = guard.watch({"settings": settings, "policies": policies, "objects": objects})
    outcomes = []
    for name in ("clean", "corrupt"):
        key = f"wine_quality/{name}.csv"
        uri = await objects.put("landing", key, wine_batches[name])
        arrived = events.DataArrived(
            model="wine_quality", bucket="landing", key=key, uri=uri, size=len(wine_batches[name])
        )
        outcomes += _types(await deliver(engine, validator.SERVICE, arrived, ports))
    assert outcomes == [events.DataValidated, events.DataRejected]
    assert_no_call_inside_a_transaction(
        guard, {"objects.get", "objects.put", "expectations.load", "expectations.run", "batch.parse"}
    )


# --- trainer ---------------------------------------------------------------------------------------------


def _register_for_run(mlflow_uri: str, model: str, run_name: str) -> str:
    """What the pipeline does on a cluster: a version with the run's metrics, behind the run's alias."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    mlflow_run = client.create_run(client.create_experiment(unique("exp")))
    client.log_metric(mlflow_run.info.run_id, "accuracy", 0.93)
    try:
        client.create_registered_model(model)
    except Exception:  # MlflowException RESOURCE_ALREADY_EXISTS
        pass
    version = client.create_model_version(
        model, source=f"runs:/{mlflow_run.info.run_id}/model", run_id=mlflow_run.info.run_id
    ).version
    client.set_registered_model_alias(model, decisions.run_alias(run_name), version)
    return str(version)


async def _emitted_types(engine: AsyncEngine, model: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.event_type)
            .where(outbox_table.c.subject == model)
            .order_by(outbox_table.c.seq)
        )
        return [r.event_type for r in rows]


async def test_the_trainer_submits_and_follows_runs_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str
) -> None:
    model = unique("wine")
    policy = {"training": {"pipeline": "wine_quality", "parameters": {"n_estimators": 50}}}
    with kfp_api.serve() as kfp:
        package = tmp_path / "package.yaml"
        package.write_text("pipelineInfo:\n  name: wine-quality\n")
        orchestrator = KfpClientOrchestrator(kfp.url, timeout_s=10)
        await orchestrator.publish("wine_quality", "0123abcd", package)
        settings = Settings(home=tmp_path, mlflow_tracking_uri=mlflow_uri, kfp_host=kfp.url)
        ports = guard.watch(
            {
                "settings": settings,
                "policies": _policies(tmp_path / "policies", model, policy),
                "orchestrator": orchestrator,
                "registry": MlflowRegistry(mlflow_uri),
                "objects": objectstore.build(settings),
                "tuner": OptunaTuner(tmp_path, {}),
                "jobs": NoTrainingJobs(),
            }
        )
        first = events.DataValidated(
            model=model, uri="s3://landing/w/1.csv", rows=9, suite="s", result_uri="r"
        )
        first_id = unique("evt")
        await service_harness.deliver(engine, trainer.SERVICE, first, ports, event_id=first_id)
        # While the run is active, every kind of trigger coalesces into one follow-up.
        second = first.model_copy(update={"uri": "s3://landing/w/2.csv"})
        await deliver(engine, trainer.SERVICE, second, ports)
        published = events.PipelinePublished(
            model=model, pipeline="wine_quality", version="0123abcd", commit=COMMIT, package_uri="kfp://p"
        )
        await deliver(engine, trainer.SERVICE, published, ports)
        retrain = events.RetrainRequested(model=model, reason="drift", requested_by="olivia")
        await deliver(engine, trainer.SERVICE, retrain, ports)
        assert len(kfp.created_runs()) == 1

        run = kfp.run_named(decisions.run_name(model, first_id))
        _register_for_run(mlflow_uri, model, run["display_name"])
        kfp.finish(run["run_id"], "SUCCEEDED")

        async def follow_up_started() -> bool:
            await service_harness.tick(engine, trainer.SERVICE, ports)
            return (await _emitted_types(engine, model)).count(events.TrainingStarted.type) == 2

        await flows.eventually(follow_up_started, "the run reported and its follow-up started", 60)
        assert events.TrainingSucceeded.type in await _emitted_types(engine, model)

    assert_no_call_inside_a_transaction(
        guard,
        {
            "orchestrator.latest",
            "orchestrator.find_run",
            "orchestrator.submit",
            "orchestrator.get_run",
            "registry.version_by_alias",
            "registry.delete_alias",
        },
    )


# --- gatekeeper ------------------------------------------------------------------------------------------


def _register_metric_version(mlflow_uri: str, model: str, accuracy: float) -> str:
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run = client.create_run(client.create_experiment(unique("gate")))
    client.log_metric(run.info.run_id, "accuracy", accuracy)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model)
    except Exception:  # MlflowException RESOURCE_ALREADY_EXISTS
        pass
    return str(client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id).version)


async def test_the_gatekeeper_asks_gitlab_and_mlflow_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str
) -> None:
    model = unique("churn")
    champion = _register_metric_version(mlflow_uri, model, 0.90)
    candidate = _register_metric_version(mlflow_uri, model, 0.91)
    later = _register_metric_version(mlflow_uri, model, 0.92)
    MlflowClient(tracking_uri=mlflow_uri).set_registered_model_alias(model, "champion", champion)
    policy = {
        "code": {"project": PROJECT, "branch": "main"},
        "promotion": {"rules": [{"name": "floor", "expr": "candidate.metrics.accuracy >= 0.80"}]},
        "approval": {
            "required": True,
            "count": 2,
            "groups": ["oncall"],
            "timeout": "1h",
            "gitlab_users": {"oncall": ["olga"]},
            "merge_request_approval": True,
        },
        "monitoring": {"debounce": "10m", "actions": {"critical": "rollback", "warning": "retrain"}},
    }
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)
        gitlab.add_merge_request(PROJECT, 7, sha=COMMIT, merge_commit_sha=COMMIT, state="merged")
        gitlab.approve_merge_request(PROJECT, 7, "olga")
        gitlab.add_member(PROJECT, "mia", 40)
        ports = guard.watch(
            {
                "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test"),
                "policies": _policies(tmp_path / "policies", model, policy),
                "registry": MlflowRegistry(mlflow_uri),
                "serving": LocalServing(tmp_path / "serving", mlflow_uri),
                "code_host": GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10),
                "notifier": LogNotifier(),
            }
        )

        def trained(version: str) -> events.TrainingSucceeded:
            return events.TrainingSucceeded(
                model=model,
                run_id=f"run-{version}",
                model_version=version,
                metrics={},
                data_uri="s3://landing/churn/1.csv",
                commit=COMMIT,
                author="alice",
            )

        # A gate opens with olga's approval of the merge request applied (1 of 2) ...
        [opened] = await deliver(engine, gatekeeper.SERVICE, trained(candidate), ports)
        assert isinstance(opened, events.GateOpened)
        # ... and mia, a Maintainer, approves it with a comment on the merge request.
        comment = events.GateDecisionRequested(
            gate_id=opened.gate_id,
            decision="approve",
            actor="mia",
            via="gitlab",
            model=model,
            project=PROJECT,
            merge_request_iid=7,
        )
        assert events.PromotionApproved in _types(await deliver(engine, gatekeeper.SERVICE, comment, ports))
        # A later candidate's gate is approved by mia's approval of the merge request itself.
        [later_gate] = await deliver(engine, gatekeeper.SERVICE, trained(later), ports)
        assert isinstance(later_gate, events.GateOpened)
        approval = events.MergeRequestChanged(
            project=PROJECT,
            project_id=1,
            iid=7,
            action="approved",
            source_branch="tune",
            target_branch="main",
            commit=COMMIT,
            author=events.GitUser(username="mia"),
            model=model,
        )
        assert events.PromotionApproved in _types(await deliver(engine, gatekeeper.SERVICE, approval, ports))
        # The registry follows the decisions; an alert starts a retrain; the expiry timer looks.
        approved = events.PromotionApproved(model=model, model_version=candidate, gate_id=opened.gate_id)
        await deliver(engine, gatekeeper.SERVICE, approved, ports)
        rejected = events.PromotionRejected(model=model, model_version=later, reason="changed our minds")
        await deliver(engine, gatekeeper.SERVICE, rejected, ports)
        alert = events.AlertFired(
            model=model, alert="ModelDrift", severity="warning", fingerprint="f1", starts_at=datetime.now(UTC)
        )
        assert _types(await deliver(engine, gatekeeper.SERVICE, alert, ports)) == [events.RetrainRequested]
        await service_harness.tick(engine, gatekeeper.SERVICE, ports)

    assert_no_call_inside_a_transaction(
        guard,
        {
            "registry.get_version",
            "registry.version_by_alias",
            "registry.flavors",
            "registry.set_alias",
            "registry.set_version_tags",
            "code_host.merge_requests_of_commit",
            "code_host.merge_request_approvers",
            "code_host.access_level",
            "code_host.post_commit_note",
            "code_host.upsert_merge_request_note",
        },
    )


# --- deployer --------------------------------------------------------------------------------------------


async def test_the_deployer_moves_serving_and_the_registry_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path, mlflow_uri: str, served_model: str
) -> None:
    model = served_model
    serving = LocalServing(tmp_path / "home", mlflow_uri)
    registry = MlflowRegistry(mlflow_uri)
    await registry.set_alias(model, "champion", "1")
    await serving.promote(model, "1", (await registry.get_version(model, "1")).source)
    rollout = {
        "mode": "serverless",
        "steps": [10, 50, 100],
        "interval": "30s",
        "guard": "0s",
        "thresholds": {"max_error_rate": 0.05, "max_p95_latency_s": 2.0, "min_requests": 1},
    }
    policies = _policies(
        tmp_path / "policies", model, {"serving_name": model.replace("_", "-"), "rollout": rollout}
    )
    ports = guard.watch(
        {"policies": policies, "registry": registry, "serving": serving, "analysis": LocalAnalysis(serving)}
    )

    async def traffic(rows: list[list[float]]) -> None:
        for _ in range(20):
            try:
                await serving.predict(model, rows)
            except PredictionFailed:
                pass

    async def tick(rows: list[list[float]]) -> None:
        await traffic(rows)
        async with engine.begin() as conn:
            await conn.execute(
                update(rollouts.rollouts).values(next_analysis_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        await service_harness.tick(engine, deployer.SERVICE, ports)

    # Version 3 rolls out; version 4 is approved meanwhile, waits, and supersedes it at the next tick.
    await deliver(engine, deployer.SERVICE, events.PromotionApproved(model=model, model_version="3"), ports)
    await deliver(engine, deployer.SERVICE, events.PromotionApproved(model=model, model_version="4"), ports)
    await tick(GOOD_ROWS)
    for _ in range(3):
        await tick(GOOD_ROWS)
    assert (await registry.version_by_alias(model, "champion")).version == "4"  # type: ignore[union-attr]
    # Version 3 again, under a data shift it cannot take: its analysis fails and it is rolled back.
    await deliver(engine, deployer.SERVICE, events.PromotionApproved(model=model, model_version="3"), ports)
    await tick(SHIFTED_ROWS)
    # On-call rolls back from 4 to what served before it.
    rollback = events.RollbackRequested(model=model, reason="drift", requested_by="olivia")
    await deliver(engine, deployer.SERVICE, rollback, ports)
    kinds = [t.split(".")[2] for t in await _emitted_types(engine, model)]
    assert kinds.count("rollout_succeeded") == 1 and kinds.count("rolled_back") == 2, kinds

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


# --- notifier --------------------------------------------------------------------------------------------


async def test_the_notifier_sends_outside_transactions_also_under_the_consumer_runtime(
    engine: AsyncEngine, guard: TransactionGuard, tmp_path: Path
) -> None:
    """Here the events go through the bus and the real consumer runtime (ServiceHost), not the harness: a
    runtime that held its batch's transaction across the handlers would be caught too."""
    model = unique("notified")
    with ChatReceiver() as slack, FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)
        channels = [{"kind": "slack", "url": slack.url("slack")}, {"kind": "gitlab"}]
        policy = {"code": {"project": PROJECT}, "notify": {"channels": channels}}
        settings = Settings(
            home=tmp_path / "home",
            api_url="http://mlcd.test",
            gitlab_url=gitlab.url,
            gitlab_token=SecretStr(gitlab.token),
        )
        ports = guard.watch(
            {
                "policies": _policies(tmp_path / "policies", model, policy),
                "code_host": GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10),
            }
        )
        told: list[events.Payload] = [
            events.PipelineBuildFailed(
                model=model, pipeline="wine_quality", commit=COMMIT, error="SyntaxError"
            ),
            events.TrainingFailed(model=model, run_id="run-7", reason="task train exited 1"),
            events.RolloutSucceeded(model=model, model_version="4", previous_version="3"),
        ]
        bus = MemoryBus(events.TOPICS)
        host = ServiceHost(settings, [notifier.SERVICE], ports, bus=bus, engine=engine)
        await host.start()
        try:
            await flows.publish(bus, *(events.new_event(p, source="mlcd/test") for p in told))

            async def all_told() -> bool:
                return len(slack.texts()) == len(told)

            await flows.eventually(all_told, "every outcome told on the chat channel")
        finally:
            await host.stop()

    assert_no_call_inside_a_transaction(
        guard, {"chat.post", "code_host.post_commit_note", "code_host.open_issue"}
    )


# --- lineage export --------------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[LineageReceiver]:
    with LineageReceiver() as receiver:
        yield receiver


async def test_the_lineage_exporter_exports_outside_transactions(
    engine: AsyncEngine, guard: TransactionGuard, receiver: LineageReceiver
) -> None:
    model = unique("wine")
    uri = f"s3://landing/{model}/b.csv"
    start = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    chain = [
        events.new_event(payload, source="mlcd/test", id=unique("e"), time=start + timedelta(minutes=i))
        for i, payload in enumerate(
            [
                events.DataArrived(model=model, bucket="landing", key=f"{model}/b.csv", uri=uri, size=9),
                events.DataValidated(model=model, uri=uri, rows=9, suite="wine", result_uri=uri + ".json"),
            ]
        )
    ]
    async with engine.begin() as conn:
        await outbox.add(conn, chain, sent=True)  # as the relay journals what it published
    store = OpenLineageExport(receiver.url, "mlcd")
    ports = guard.watch({"lineage": (store,)})
    try:
        for event in chain:
            await service_harness.deliver(
                engine, lineage_export.SERVICE, event.data, ports, event_id=event.id
            )
    finally:
        await store.close()
    assert receiver.received()
    assert_no_call_inside_a_transaction(guard, {"lineage[openlineage].export"})
