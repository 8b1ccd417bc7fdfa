"""The KServe adapter and the Prometheus analysis against the KServe stand-in, in both modes.

Real parts: MLflow with S3 artifacts (the MinIO gateway), kserve-storage downloading what mlcd wrote,
one MLServer per revision, Prometheus scraping queue-proxy metrics and MLServer's own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mlcd.policy import analysis
from mlcd.policy.schema import Rollout
from tests.support import kserve_models, kserve_world, mlflow_s3, mlserver

pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("kserve-standin")]
MODES = ["serverless", "raw"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mlflow_s3.S3Store]:
    mlserver.require()
    with mlflow_s3.minio_s3(tmp_path_factory.mktemp("minio"), "mlflow") as s3:
        yield s3


@pytest.fixture(scope="module")
def registered(
    tmp_path_factory: pytest.TempPathFactory, store: mlflow_s3.S3Store
) -> Iterator[tuple[str, str]]:
    """(tracking URI, model) with versions 1 and 2 good and 3 broken, files in the MinIO gateway."""
    with mlflow_s3.mlflow_server(tmp_path_factory.mktemp("mlflow"), "s3://mlflow/") as uri:
        model = f"iris_{uuid.uuid4().hex[:6]}"
        kserve_models.register(uri, model, store)
        yield uri, model


@pytest.fixture(params=MODES)
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, store: mlflow_s3.S3Store, registered: tuple[str, str]
) -> AsyncIterator[kserve_world.KServeWorld]:
    uri, model = registered
    async with kserve_world.world(tmp_path, store, uri, model, request.param) as the_world:
        yield the_world


async def _measured(world: kserve_world.KServeWorld, version: str, revision: str) -> list[analysis.Outcome]:
    """The built-in checks for the revision, once Prometheus has enough requests to judge them."""
    target = analysis.Target(kserve_world.NAMESPACE, world.name, revision, world.model, version, 30)
    platform: analysis.Platform = "serverless" if world.mode == "serverless" else "raw"
    deadline = time.monotonic() + 90
    while True:
        outcomes = await world.analysis.evaluate(
            Rollout(thresholds={"min_requests": 5}).checks(), platform, target
        )
        if all(o.passed is not None for o in outcomes) or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(0.5)


async def test_the_stand_in_serves_splits_measures_and_rolls_back_like_kserve(
    world: kserve_world.KServeWorld,
) -> None:
    controller = world.controller
    # A good canary, before any request: every check is inconclusive, none passes.
    await world.serving.set_canary(world.model, "2", await world.uri("2"), 50)
    state = await world.until(lambda s: s.ready and s.serving_percent == 50, "canary at 50 %")
    assert state.canary_uri == await world.uri("2") and state.stable_uri == await world.uri("1")
    target = analysis.Target(kserve_world.NAMESPACE, world.name, state.canary_revision, world.model, "2", 10)
    silent = await world.analysis.evaluate(Rollout().checks(), _platform(world), target)
    assert [o.passed for o in silent] == [None, None, None]

    # With traffic, split by the stand-in between two real MLServers: every check passes.
    async with controller.load(kserve_world.NAMESPACE, world.name):
        good = await _measured(world, "2", state.canary_revision)
    assert [o.passed for o in good] == [True, True, True], good
    assert len({r.revision for r in controller.requests if r.status == 200}) == 2

    # A candidate whose model errors on every request: MLServer's 500s fail the success rate.
    broken_uri = await world.uri(kserve_models.BROKEN)
    await world.serving.set_canary(world.model, kserve_models.BROKEN, broken_uri, 50)
    state = await world.until(
        lambda s: s.ready and s.serving_percent == 50 and s.canary_uri == broken_uri, "broken canary at 50 %"
    )
    bad = state.canary_revision
    async with controller.load(kserve_world.NAMESPACE, world.name):
        failing = await _measured(world, kserve_models.BROKEN, bad)
        by_name = {o.name: o for o in failing}
        assert by_name["success-rate"].passed is False and by_name["success-rate"].value == 0.0, failing
        # The rollback, under load: at no point does the bad revision get all the traffic.
        splits_before = len(controller.splits)
        await world.serving.rollback(world.model, "1", await world.uri("1"))
    after = controller.splits[splits_before:]
    assert after, "the rollback changed no traffic split"
    assert all(split.get(name, 0) < 100 for _, split in after for name in (bad, f"{world.name}-{bad}")), after
    final = await world.serving.state(world.model)
    assert (final.stable_version, final.canary_version, final.ready) == ("1", None, True)
    assert final.stable_uri == await world.uri("1") and sum(final.traffic.values()) == 100

    # A revision whose files cannot be loaded is reported not Ready, with MLServer's reason.
    uri = await world.uri("2")
    controller.fail_to_load(uri)
    await world.serving.set_canary(world.model, "2", uri, 10)
    failed = await world.until(lambda s: "load" in s.message or "exited" in s.message, "revision failed")
    assert not failed.ready and failed.serving_percent == 0


def _platform(world: kserve_world.KServeWorld) -> analysis.Platform:
    return "serverless" if world.mode == "serverless" else "raw"
