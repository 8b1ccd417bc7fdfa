"""The deployer's rollouts on KServe, for real: the issue's scenarios, each in Serverless and Standard mode.

The deployer's handlers run over the KServe adapter and the Prometheus analysis; the KServe stand-in
downloads what mlcd wrote with kserve-storage from the MinIO gateway, serves each revision with a real
MLServer, reports status as KServe does and records every traffic split; a real Prometheus scrapes the
queue-proxy metrics of the real answers and MLServer's own. The timer ticks in real time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import kserve
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.deployer import handlers
from mlcd.policy.book import PolicyBook
from mlcd.store import rollouts
from mlcd.store.tables import outbox as outbox_table
from tests.fakes import kube_api
from tests.support import (
    kserve_models,
    kserve_world,
    mlflow_s3,
    mlserver,
    service_harness,
    serving_models,
)
from tests.support.deployer_driver import DeployerDriver

# On SQLite only: the rollout over the serving platform is the subject here, not the store.
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
pytestmark = [SQLITE_ONLY, pytest.mark.timeout(1200), pytest.mark.xdist_group("kserve-rollouts")]
MODES = ["serverless", "raw"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mlflow_s3.S3Store]:
    mlserver.require()
    with mlflow_s3.minio_s3(tmp_path_factory.mktemp("minio"), "mlflow") as s3:
        yield s3


@pytest.fixture(scope="module")
def s3_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_s3.mlflow_server(tmp_path_factory.mktemp("mlflow"), "s3://mlflow/") as uri:
        yield uri


@pytest.fixture
def model(s3_mlflow: str, store: mlflow_s3.S3Store) -> str:
    """A fresh model per test (its champion alias starts unset): 1 and 2 good, 3 errors on every request."""
    name = f"iris_{uuid.uuid4().hex[:6]}"
    kserve_models.register(s3_mlflow, name, store)
    return name


@dataclass
class Rollouts:
    """The deployer over one KServe world, its timer ticking in real time."""

    world: kserve_world.KServeWorld
    engine: AsyncEngine

    @property
    def deployer(self) -> DeployerDriver:
        ports = {
            "policies": self.world.policies,
            "registry": self.world.registry,
            "serving": self.world.serving,
            "analysis": self.world.analysis,
        }
        return DeployerDriver(self.engine, self.world.model, ports, lambda: self.world.controller.splits)

    async def serve_first_version(self) -> None:
        """Version 1 through the deployer: champion only once KServe reports it Ready with its URI."""
        await self.deployer.approve(kserve_models.GOOD)
        assert (
            await self.deployer.champion() is None
        )  # the stand-in is still downloading and starting MLServer
        done = await self.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK})
        assert done.state == rollouts.SUCCEEDED, (
            f"{done.state}: {done.reason} (step {done.step_index}, phase {done.phase})"
        )
        state = await self.world.serving.state(self.world.model)
        assert state.ready and state.stable_uri == await self.world.uri(kserve_models.GOOD)
        assert await self.deployer.champion() == kserve_models.GOOD


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def deployer(
    tmp_path: Path,
    store: mlflow_s3.S3Store,
    s3_mlflow: str,
    model: str,
    mode: str,
    engine: AsyncEngine,
    policy_extra: str = "",
) -> AsyncIterator[Rollouts]:
    async with kserve_world.world(
        tmp_path, store, s3_mlflow, model, mode, policy_extra=policy_extra, serve_first=False
    ) as world:
        the_rollouts = Rollouts(world, engine)
        await the_rollouts.serve_first_version()
        yield the_rollouts


def _bad_never_got_everything(world: kserve_world.KServeWorld, bad_revision: str) -> None:
    names = {bad_revision, f"{world.name}-{bad_revision}"}
    assert world.controller.splits, "no traffic split was recorded"
    assert all(split.get(name, 0) < 100 for _, split in world.controller.splits for name in names), (
        world.controller.splits
    )


async def test_a_good_candidate_goes_10_50_100_and_becomes_champion_after_a_first_version_served_when_ready(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, mode: str, engine: AsyncEngine
) -> None:
    async with deployer(tmp_path, store, s3_mlflow, model, mode, engine) as run:
        async with run.world.controller.load(kserve_world.NAMESPACE, run.world.name):
            await run.deployer.approve(kserve_models.ALSO_GOOD)
            done = await run.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED})

        assert done.state == rollouts.SUCCEEDED, (
            f"{done.state}: {done.reason} (step {done.step_index}, phase {done.phase})"
        )
        shares = {min(split.values()) for _, split in run.world.controller.splits if len(split) == 2}
        assert {10, 50} <= shares, run.world.controller.splits
        assert await run.deployer.champion() == kserve_models.ALSO_GOOD
        state = await run.world.serving.state(run.world.model)
        assert state.stable_version == kserve_models.ALSO_GOOD and state.canary_version is None
        assert state.stable_uri == await run.world.uri(kserve_models.ALSO_GOOD)


async def test_a_candidate_that_errors_on_every_request_is_rolled_back_never_taking_all_traffic(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, mode: str, engine: AsyncEngine
) -> None:
    async with deployer(tmp_path, store, s3_mlflow, model, mode, engine) as run:
        async with run.world.controller.load(kserve_world.NAMESPACE, run.world.name):
            await run.deployer.approve(kserve_models.BROKEN)
            done = await run.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED})
            first = set(run.world.controller.splits[0][1])  # the first version's revision alone
            bad = next(n for _, split in run.world.controller.splits for n in split if n not in first)

        assert done.state == rollouts.ROLLED_BACK, (
            f"{done.state}: {done.reason} (step {done.step_index}, phase {done.phase})"
        )
        assert done.reason.startswith("analysis failed at 10%: success-rate"), done.reason
        assert await run.deployer.champion() == kserve_models.GOOD
        pulled = await run.world.registry.get_version(run.world.model, kserve_models.BROKEN)
        assert "success-rate" in pulled.tags[handlers.ROLLED_BACK_TAG]
        _bad_never_got_everything(run.world, bad.removeprefix(f"{run.world.name}-"))
        state = await run.world.serving.state(run.world.model)
        assert (state.stable_version, state.canary_version, state.ready) == (kserve_models.GOOD, None, True)


async def test_no_traffic_is_inconclusive_and_pauses_then_abort_and_a_retry_with_traffic_succeeds(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, mode: str, engine: AsyncEngine
) -> None:
    extra = "  progress_deadline: 90s\n  on_inconclusive: pause\n"
    async with deployer(tmp_path, store, s3_mlflow, model, mode, engine, extra) as run:
        await run.deployer.approve(kserve_models.ALSO_GOOD)
        paused = await run.deployer.run_until({rollouts.PAUSED, rollouts.SUCCEEDED, rollouts.ROLLED_BACK})
        assert paused.state == rollouts.PAUSED, f"{paused.state}: {paused.reason}"
        assert paused.step_index == 0 and "inconclusive" in paused.reason and "no data" in paused.reason
        assert await run.deployer.champion() == kserve_models.GOOD
        async with run.engine.connect() as conn:  # what the notifier tells as a rollout_paused notice
            query = select(outbox_table.c.value).where(outbox_table.c.event_type == events.RolloutPaused.type)
            [told] = [json.loads(value) for value in (await conn.scalars(query)).all()]
        assert (told["model_version"], told["traffic_percent"]) == (
            kserve_models.ALSO_GOOD,
            paused.traffic_percent,
        )
        assert told["reason"].startswith("analysis inconclusive") and "no data" in told["reason"]

        async with run.engine.begin() as conn:  # what `mlcd rollout abort` asks through the API
            await rollouts.request(conn, paused, "abort", handlers._now())
        aborted = await run.deployer.run_until({rollouts.ROLLED_BACK})
        assert aborted.reason == "aborted by on-call"
        assert await run.deployer.champion() == kserve_models.GOOD

        async with run.world.controller.load(kserve_world.NAMESPACE, run.world.name):
            await run.deployer.approve(kserve_models.ALSO_GOOD)  # what `mlcd rollout retry` emits
            retried = await run.deployer.run_until(
                {rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED}
            )
        assert retried.state == rollouts.SUCCEEDED, f"{retried.state}: {retried.reason}"
        assert await run.deployer.champion() == kserve_models.ALSO_GOOD


async def test_a_slow_start_past_the_deadline_fails_and_inside_it_succeeds(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, mode: str, engine: AsyncEngine
) -> None:
    extra = "  progress_deadline: 90s\n"
    async with deployer(tmp_path, store, s3_mlflow, model, mode, engine, extra) as run:
        async with run.world.controller.load(kserve_world.NAMESPACE, run.world.name):
            run.world.controller.slow(await run.world.uri(kserve_models.ALSO_GOOD), 300)
            await run.deployer.approve(kserve_models.ALSO_GOOD)
            late = await run.deployer.run_until({rollouts.ROLLED_BACK, rollouts.SUCCEEDED, rollouts.PAUSED})
            assert late.state == rollouts.ROLLED_BACK, f"{late.state}: {late.reason}"
            assert late.reason.startswith("canary not Ready at 10% within 0:01:30"), late.reason
            assert await run.deployer.champion() == kserve_models.GOOD

            run.world.controller.slow(await run.world.uri(kserve_models.ALSO_GOOD), 5)
            await run.deployer.approve(kserve_models.ALSO_GOOD)
            slow = await run.deployer.run_until({rollouts.ROLLED_BACK, rollouts.SUCCEEDED, rollouts.PAUSED})
        assert slow.state == rollouts.SUCCEEDED, (
            f"{slow.state}: {slow.reason} (step {slow.step_index}, phase {slow.phase})"
        )
        assert await run.deployer.champion() == kserve_models.ALSO_GOOD


async def test_an_artifact_store_kserve_cannot_read_is_refused_with_its_reason(
    tmp_path: Path, mlflow_uri: str, mode: str, engine: AsyncEngine
) -> None:
    name = f"wine_{uuid.uuid4().hex[:6]}"
    serving_models.register_versions(mlflow_uri, name)  # a server that proxies artifacts: mlflow-artifacts:/
    (tmp_path / f"{name}.yaml").write_text(kserve_world.policy_text(name, "wine", mode))
    policies = PolicyBook(tmp_path)
    async with kube_api.running() as api:
        api.add(kserve_world.NAMESPACE, "wine", "s3://models/wine/0", "mlflow")
        ports = {
            "policies": policies,
            "registry": MlflowRegistry(mlflow_uri),
            "serving": kserve.KServeServing(
                lambda: client.ApiClient(client.Configuration(host=api.url)), kserve_world.NAMESPACE, policies
            ),
            "analysis": None,
        }
        emitted = await service_harness.deliver(
            engine, handlers.SERVICE, events.PromotionApproved(model=name, model_version="1"), ports
        )
        assert api.patches == []

    async with engine.connect() as conn:
        refused = await rollouts.latest(conn, name)
    assert refused is not None and refused.state == rollouts.FAILED
    assert "proxied artifact scheme" in refused.reason and "--default-artifact-root s3://" in refused.reason
    (notice,) = [e for e in emitted if isinstance(e, events.NoticeRaised)]
    assert "refused" in notice.message and "mlflow-artifacts:/" in notice.message
    assert await MlflowRegistry(mlflow_uri).version_by_alias(name, handlers.CHAMPION) is None
