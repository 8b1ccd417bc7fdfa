"""The trainer against the fake KFP API (and once against the real kfp.local runner), with real MLflow."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import kfp, objectstore
from mlcd.adapters.kfp import KfpClientOrchestrator, LocalOrchestrator
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.optuna_tuner import OptunaTuner
from mlcd.adapters.training_jobs import NoTrainingJobs
from mlcd.bus import runtime
from mlcd.bus.port import Bus
from mlcd.bus.service import bind
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.store import migrate, training
from mlcd.store.database import create_engine
from mlcd.store.tables import inbox, outbox
from mlcd.trainer import decisions
from mlcd.trainer.handlers import SERVICE
from tests.conftest import REPO, unique
from tests.fakes import kfp_api
from tests.support import flows, service_harness

MODEL = "wine_quality"
ACCESS_KEY, SECRET_KEY = "trainer-access-key-7f3a", "trainer-secret-key-91c2"  # must never be recorded
METRICS = {"accuracy": 0.97, "f1_macro": 0.96}


@pytest.fixture
def fake() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        yield server


def policies(tmp_path: Path, **parameters: Any) -> PolicyBook:
    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(REPO / "policies" / "defaults.yaml", folder)
    text = (REPO / "policies" / "wine_quality.yaml").read_text()
    for key, value in parameters.items():
        text = text.replace("  parameters:\n", f"  parameters:\n    {key}: {json.dumps(value)}\n")
    (folder / "wine_quality.yaml").write_text(text)
    return PolicyBook(folder)


@pytest.fixture
async def kfp_ports(tmp_path: Path, fake: kfp_api.FakeKfp, mlflow_uri: str) -> dict[str, Any]:
    package = tmp_path / "package.yaml"
    package.write_text("pipelineInfo:\n  name: wine-quality\n")
    orchestrator = KfpClientOrchestrator(fake.url, timeout_s=5)
    await orchestrator.publish("wine_quality", "0123abcd", package)
    settings = Settings(
        home=tmp_path,
        mlflow_tracking_uri=mlflow_uri,
        kfp_host=fake.url,
        s3_endpoint="minio.example:9000",  # only named in run parameters: no S3 call is made
        s3_access_key=SecretStr(ACCESS_KEY),
        s3_secret_key=SecretStr(SECRET_KEY),
    )
    return {
        "settings": settings,
        "policies": policies(tmp_path),
        "orchestrator": orchestrator,
        "registry": MlflowRegistry(mlflow_uri),
        "objects": objectstore.build(settings),
        "tuner": OptunaTuner(tmp_path, {}),
        "jobs": NoTrainingJobs(),
    }


async def deliver(engine: AsyncEngine, ports: dict[str, Any], payload: events.Payload, event_id: str) -> None:
    """Hand one event to the trainer's handlers as the runtime does."""
    await service_harness.deliver(engine, SERVICE, payload, ports, event_id=event_id)


async def emitted(engine: AsyncEngine, payload_type: type[events.Payload]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.value).where(outbox.c.event_type == payload_type.type).order_by(outbox.c.seq)
        )
        return [json.loads(row.value) for row in rows]


async def follow_until(
    engine: AsyncEngine, ports: dict[str, Any], done: Callable[[], Awaitable[bool]], timeout_s: float = 120
) -> None:
    """Run the trainer's follow timer until `done()` holds."""

    async def followed() -> bool:
        await service_harness.tick(engine, SERVICE, ports)
        return await done()

    await flows.eventually(followed, "the trainer reporting the run", timeout_s)


def validated(uri: str, author: str = "") -> events.DataValidated:
    return events.DataValidated(
        model=MODEL, uri=uri, rows=178, suite="wine_quality", result_uri=uri + ".json", author=author
    )


class Crash(Exception):
    pass


class _CrashAfterSubmit:
    """The orchestrator, but the trainer dies right after KFP created the run."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        await self._real.submit(*args, **kwargs)
        raise Crash


async def test_trigger_redelivered_after_a_crash_starts_one_run(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any]
) -> None:
    trigger_id = unique("evt")
    crashing = {**kfp_ports, "orchestrator": _CrashAfterSubmit(kfp_ports["orchestrator"])}
    with pytest.raises(Crash):  # the run was created, then the trainer died before recording it
        await deliver(engine, crashing, validated("s3://landing/wine_quality/a.csv"), trigger_id)

    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/a.csv"), trigger_id)
    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/a.csv"), trigger_id)

    assert len(fake.created_runs()) == 1
    started = await emitted(engine, events.TrainingStarted)
    assert len(started) == 1
    assert started[0]["run_name"] == decisions.run_name(MODEL, trigger_id)
    assert started[0]["pipeline_version"] == "0123abcd"
    run = fake.run_named(decisions.run_name(MODEL, trigger_id))
    assert run["runtime_config"]["parameters"]["data_uri"] == "s3://landing/wine_quality/a.csv"
    assert run["runtime_config"]["parameters"]["n_estimators"] == 50  # from the model's policy


async def test_a_cluster_run_gets_the_s3_endpoint_but_never_the_credentials(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any]
) -> None:
    trigger_id = unique("evt")

    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/a.csv"), trigger_id)

    run = fake.run_named(decisions.run_name(MODEL, trigger_id))
    assert run["runtime_config"]["parameters"]["s3_endpoint"] == "http://minio.example:9000"
    recorded = json.dumps([fake.runs, await emitted(engine, events.TrainingStarted)], default=str)
    assert ACCESS_KEY not in recorded and SECRET_KEY not in recorded


async def test_duplicate_delivery_on_the_bus_starts_one_run(
    engine: AsyncEngine, bus: Bus, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any]
) -> None:
    handlers = {t.type: [bind(h, kfp_ports) for h in chain] for t, chain in SERVICE.handlers.items()}
    consumer = runtime.Consumer(
        bus=bus, engine=engine, group=SERVICE.group, handlers=handlers, source=SERVICE.source
    )
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(consumer.ready.wait(), 30)
        record = events.encode(events.new_event(validated("s3://landing/wine_quality/a.csv"), source="test"))
        # Same model, so same partition: once the last event is handled, both copies before it were too.
        last = events.new_event(events.RetrainRequested(model=MODEL, reason="drift"), source="test")
        await bus.publish([record, record, events.encode(last)])

        async def handled() -> bool:
            async with engine.connect() as conn:
                return bool(await conn.scalar(select(inbox.c.event_id).where(inbox.c.event_id == last.id)))

        await flows.eventually(handled, "the trainer handling the events")
    finally:
        stop.set()
        await consuming

    assert len(fake.created_runs()) == 1
    assert len(await emitted(engine, events.TrainingStarted)) == 1


def register_for_run(mlflow_uri: str, model: str, run_name: str, metrics: dict[str, float]) -> str:
    """What the pipeline does on a cluster: a version with the run's metrics, behind the run's alias."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    mlflow_run = client.create_run(client.create_experiment(unique("exp")))
    for key, value in metrics.items():
        client.log_metric(mlflow_run.info.run_id, key, value)
    try:
        client.create_registered_model(model)
    except Exception:  # MlflowException RESOURCE_ALREADY_EXISTS: another test registered it first
        pass
    version = client.create_model_version(
        model, source=f"runs:/{mlflow_run.info.run_id}/model", run_id=mlflow_run.info.run_id
    ).version
    client.set_registered_model_alias(model, decisions.run_alias(run_name), version)
    return str(version)


async def test_triggers_during_a_run_coalesce_into_one_follow_up_on_the_newest_data(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any], mlflow_uri: str
) -> None:
    first, second, third = unique("evt"), unique("evt"), unique("evt")
    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/1.csv", "ana-uploader"), first)
    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/2.csv", "ben-uploader"), second)
    retrain = events.RetrainRequested(model=MODEL, reason="drift", requested_by="olivia")
    await deliver(engine, kfp_ports, retrain, third)
    assert len(fake.created_runs()) == 1

    first_run = fake.run_named(decisions.run_name(MODEL, first))
    registered = register_for_run(mlflow_uri, MODEL, first_run["display_name"], METRICS)
    fake.finish(first_run["run_id"], "SUCCEEDED")

    async def succeeded() -> bool:
        return bool(await emitted(engine, events.TrainingSucceeded))

    await follow_until(engine, kfp_ports, succeeded)
    assert len(fake.created_runs()) == 2
    follow_up = fake.run_named(decisions.run_name(MODEL, third))
    assert follow_up["runtime_config"]["parameters"]["data_uri"] == "s3://landing/wine_quality/2.csv"
    [result] = await emitted(engine, events.TrainingSucceeded)
    assert result["model_version"] == registered and result["metrics"] == METRICS
    assert result["data_uri"] == "s3://landing/wine_quality/1.csv"
    # each run keeps the author of the trigger that started it, the follow-up's too
    assert result["author"] == "ana-uploader"
    started = await emitted(engine, events.TrainingStarted)
    assert [(s["trigger_event_id"], s["author"]) for s in started] == [
        (first, "ana-uploader"),
        (third, "olivia"),
    ]
    async with engine.connect() as conn:
        runs = await training.runs(conn, MODEL)
    assert [(r.data_uri, r.state) for r in runs] == [
        ("s3://landing/wine_quality/1.csv", "SUCCEEDED"),
        ("s3://landing/wine_quality/2.csv", "RUNNING"),
    ]


async def test_failing_task_reports_training_failed_with_the_reason(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any]
) -> None:
    trigger_id = unique("evt")
    await deliver(engine, kfp_ports, validated("s3://landing/wine_quality/a.csv"), trigger_id)
    run = fake.run_named(decisions.run_name(MODEL, trigger_id))

    fake.finish(run["run_id"], "FAILED", failed_task="train-model", error="ValueError: too few rows")

    async def failed() -> bool:
        return bool(await emitted(engine, events.TrainingFailed))

    await follow_until(engine, kfp_ports, failed)
    [report] = await emitted(engine, events.TrainingFailed)
    assert report["reason"] == "task train-model failed"
    assert report["failed_task"] == "train-model"
    assert "too few rows" in report["log_tail"]


async def test_a_cluster_run_finds_its_model_version_in_mlflow(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any], mlflow_uri: str
) -> None:
    model = unique("wine")
    trigger_id = unique("evt")
    (kfp_ports["policies"].folder / "other.yaml").write_text(
        f"model: {model}\ntraining:\n  pipeline: wine_quality\n"
    )
    batch = events.DataValidated(model=model, uri="s3://landing/b.csv", rows=9, suite="s", result_uri="r")
    await deliver(engine, kfp_ports, batch, trigger_id)
    client = MlflowClient(tracking_uri=mlflow_uri)
    mlflow_run = client.create_run(client.create_experiment(unique("exp")))
    client.log_metric(mlflow_run.info.run_id, "accuracy", 0.91)
    client.create_registered_model(model)
    version = client.create_model_version(
        model, source=f"runs:/{mlflow_run.info.run_id}/model", run_id=mlflow_run.info.run_id
    ).version
    name = decisions.run_name(model, trigger_id)
    client.set_registered_model_alias(model, decisions.run_alias(name), version)

    fake.finish(fake.run_named(name)["run_id"], "SUCCEEDED")

    async def succeeded() -> bool:
        return bool(await emitted(engine, events.TrainingSucceeded))

    await follow_until(engine, kfp_ports, succeeded)
    [result] = await emitted(engine, events.TrainingSucceeded)
    assert result["model_version"] == str(version) and result["metrics"]["accuracy"] == 0.91
    assert decisions.run_alias(name) not in client.get_registered_model(model).aliases


async def test_retrain_without_any_data_raises_a_notice(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any]
) -> None:
    await deliver(engine, kfp_ports, events.RetrainRequested(model=MODEL, reason="drift"), unique("evt"))

    assert fake.created_runs() == []
    [notice] = await emitted(engine, events.NoticeRaised)
    assert "no data batch was validated yet" in notice["message"]


@pytest.fixture
async def local_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def local_settings(tmp_path: Path, mlflow_uri: str) -> Settings:
    """The embedded defaults (folder object store, kfp.local), with S3 credentials configured."""
    return Settings(
        home=tmp_path / "home",
        mlflow_tracking_uri=mlflow_uri,
        pipelines_dir=REPO / "pipelines",
        s3_access_key=SecretStr(ACCESS_KEY),
        s3_secret_key=SecretStr(SECRET_KEY),
    )


@pytest.fixture
async def local_orchestrator(local_settings: Settings) -> AsyncIterator[LocalOrchestrator]:
    orchestrator = kfp.build(local_settings)
    assert isinstance(orchestrator, LocalOrchestrator)
    yield orchestrator
    await orchestrator.close()


@pytest.fixture
async def clean_batch(tmp_path: Path) -> str:
    script = REPO / "pipelines" / "wine_quality" / "make_batches.py"
    await asyncio.to_thread(subprocess.run, [sys.executable, str(script), str(tmp_path / "data")], check=True)
    return (tmp_path / "data" / "clean.csv").as_uri()


def local_ports(
    tmp_path: Path, settings: Settings, orchestrator: LocalOrchestrator, **policy_parameters: Any
) -> dict[str, Any]:
    assert settings.mlflow_tracking_uri is not None
    return {
        "settings": settings,
        "policies": policies(tmp_path, **policy_parameters),
        "orchestrator": orchestrator,
        "registry": MlflowRegistry(settings.mlflow_tracking_uri),
        "objects": objectstore.build(settings),
        "tuner": OptunaTuner(settings.home, {}),
        "jobs": NoTrainingJobs(),
    }


@pytest.mark.slow
async def test_a_real_run_reads_an_ingested_batch_from_the_folder_store_and_reports_its_version(
    tmp_path: Path,
    local_engine: AsyncEngine,
    local_settings: Settings,
    local_orchestrator: LocalOrchestrator,
    clean_batch: str,
    mlflow_uri: str,
) -> None:
    ports = local_ports(tmp_path, local_settings, local_orchestrator, n_estimators=10)
    batch = await asyncio.to_thread(Path(clean_batch.removeprefix("file://")).read_bytes)
    stored = await ports["objects"].put("landing", "wine_quality/batch 01.csv", batch)
    canonical = "s3://landing/wine_quality/batch 01.csv"  # how ingest names a batch, embedded or not
    trigger_id = unique("evt")

    await deliver(local_engine, ports, validated(canonical), trigger_id)

    async def succeeded() -> bool:
        return bool(await emitted(local_engine, events.TrainingSucceeded))

    await follow_until(local_engine, ports, succeeded, timeout_s=240)
    [result] = await emitted(local_engine, events.TrainingSucceeded)
    assert result["data_uri"] == canonical
    assert [s["data_uri"] for s in await emitted(local_engine, events.TrainingStarted)] == [canonical]
    assert result["metrics"]["accuracy"] > 0.8 and "recall_class_2" in result["metrics"]
    client = MlflowClient(tracking_uri=mlflow_uri)
    version = client.get_model_version(MODEL, result["model_version"])
    assert version.tags["data_uri"] == stored and stored.startswith("file://")  # what the pipeline read
    assert version.tags["pipeline_version"] == result["pipeline_version"]
    assert version.tags["mlcd.registered_by"] == "mlcd-trainer"
    assert version.tags["mlcd.run_name"] == decisions.run_name(MODEL, trigger_id)
    aliases = client.get_registered_model(MODEL).aliases
    assert decisions.run_alias(decisions.run_name(MODEL, trigger_id)) not in aliases
    run_records = [p.read_text() for p in (local_settings.home / "runs").iterdir() if p.is_file()]
    assert run_records and not any(ACCESS_KEY in r or SECRET_KEY in r for r in run_records)


@pytest.mark.slow
async def test_a_real_failing_pipeline_task_reports_training_failed(
    tmp_path: Path,
    local_engine: AsyncEngine,
    local_settings: Settings,
    local_orchestrator: LocalOrchestrator,
    clean_batch: str,
) -> None:
    ports = local_ports(tmp_path, local_settings, local_orchestrator, fail_on_purpose=True)

    await deliver(local_engine, ports, validated(clean_batch), unique("evt"))

    async def failed() -> bool:
        return bool(await emitted(local_engine, events.TrainingFailed))

    await follow_until(local_engine, ports, failed, timeout_s=240)
    [report] = await emitted(local_engine, events.TrainingFailed)
    assert report["failed_task"] == "train-model"
    assert report["reason"] == "task train-model failed"
    assert "fail_on_purpose is set" in report["log_tail"]


async def test_each_run_reads_its_batch_as_validated_and_a_retrain_of_another_batch_as_it_is(
    engine: AsyncEngine, fake: kfp_api.FakeKfp, kfp_ports: dict[str, Any], mlflow_uri: str
) -> None:
    first, second = "s3://landing/wine_quality/1.csv", "s3://landing/wine_quality/2.csv"
    pinned = {first: {"etag": "e1" * 16}, second: {"etag": "e2" * 16, "version_id": "v2"}}
    triggers = [unique("evt") for _ in range(4)]
    await deliver(engine, kfp_ports, validated(first).model_copy(update=pinned[first]), triggers[0])
    await deliver(engine, kfp_ports, validated(second).model_copy(update=pinned[second]), triggers[1])
    # each ends the run before it, so the next starts: the queued follow-up, then the two retrains
    later = [
        events.RetrainRequested(model=MODEL, reason="drift"),
        events.RetrainRequested(model=MODEL, reason="on-call", data_uri=first),
    ]
    for ending, trigger, retrain in zip(triggers[:-1], triggers[1:], [None, *later], strict=True):
        if retrain is not None:
            await deliver(engine, kfp_ports, retrain, trigger)
        run = fake.run_named(decisions.run_name(MODEL, ending))
        register_for_run(mlflow_uri, MODEL, run["display_name"], METRICS)
        fake.finish(run["run_id"], "SUCCEEDED")

        async def next_started(name: str = decisions.run_name(MODEL, trigger)) -> bool:
            return any(s["run_name"] == name for s in await emitted(engine, events.TrainingStarted))

        await follow_until(engine, kfp_ports, next_started)

    parameters = [
        fake.run_named(decisions.run_name(MODEL, t))["runtime_config"]["parameters"] for t in triggers
    ]
    read = [(p["data_uri"], p["data_etag"], p["data_version_id"]) for p in parameters]
    assert read == [
        (first, "e1" * 16, ""),
        (second, "e2" * 16, "v2"),  # the follow-up queued while the first run ran
        (second, "e2" * 16, "v2"),  # a retrain of the newest batch: as it was validated
        (first, "", ""),  # a retrain naming an older batch: the object as it is now, not pinned
    ]
    started = await emitted(engine, events.TrainingStarted)
    assert [(s["data_etag"], s["data_version_id"]) for s in started] == [r[1:] for r in read]
