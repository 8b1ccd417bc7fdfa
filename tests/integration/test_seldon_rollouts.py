"""The deployer's rollouts on Seldon Core 2, for real: a good canary promoted, a bad one rolled back, and
a shadow comparison refusing a candidate that disagrees with the champion before users see it.

The deployer's handlers run over the Seldon adapter and its analysis (Prometheus, and the agreement
probe through the mesh); the Seldon stand-in downloads what mlcd wrote from the MinIO gateway, serves each
Model version with a real MLServer, splits and mirrors the endpoint's traffic as the Experiment says, and
counts real answers in Seldon's metrics, which a real Prometheus scrapes. The timer ticks in real time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.deployer import handlers
from mlcd.store import rollouts
from tests.fakes import seldon_controller
from tests.support import kserve_models, mlflow_s3, mlserver, seldon_world, service_harness

# On SQLite only: the rollout over the serving platform is the subject here, not the store.
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
pytestmark = [SQLITE_ONLY, pytest.mark.timeout(900), pytest.mark.xdist_group("seldon-rollouts")]

SHADOW_CHECKS = (
    "[{name: request-count, template: request-count, min: 2},"
    " {name: success-rate, template: request-success-rate, min: 0.95},"
    " {name: latency-vs-champion, template: latency-ratio-to-champion, max: 10},"
    " {name: agreement, template: prediction-agreement, min: 0.99}]"
)


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
    name = f"iris_{uuid.uuid4().hex[:6]}"
    seldon_world.register(s3_mlflow, name, store)
    return name


def _moves(world: seldon_world.SeldonWorld) -> list[tuple[dict[str, int], str | None]]:
    """Every split of the endpoint's traffic the stand-in applied, with the mirrored Model if any."""
    splits = world.controller.splits
    return [(split, mirror) for endpoint, split, mirror in splits if endpoint == world.endpoint]


async def _answered_by(world: seldon_world.SeldonWorld, internal: str) -> seldon_controller.Request:
    """The first user request the Model version `internal` answered, waiting up to 20 s for one."""
    for _ in range(100):
        found = [r for r in world.controller.requests if r.internal == internal and not r.mirrored]
        if found:
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{internal} answered no one: {world.controller.requests[-3:]}")


def _gone(world: seldon_world.SeldonWorld, version: str) -> None:
    """The Experiment is stopped and the candidate's Model deleted: only the endpoint Model is left."""
    left = sorted(f"{plural}/{name}" for plural, _, name in world.api.objects)
    assert left == [f"models/{world.endpoint}"], left
    assert ("delete", "models", f"{world.endpoint}-v{version}") in world.api.writes


async def test_a_good_candidate_passes_shadow_10_50_100_becomes_champion_and_rolls_back_on_request(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, engine: AsyncEngine
) -> None:
    async with seldon_world.world(
        tmp_path, store, s3_mlflow, model, engine, steps="[0, 10, 50, 100]", analysis=SHADOW_CHECKS
    ) as world:
        async with world.controller.load(world.endpoint):
            await world.deployer.approve(kserve_models.ALSO_GOOD)
            done = await world.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED})

        assert done.state == rollouts.SUCCEEDED, f"{done.state}: {done.reason} (step {done.step_index})"
        assert done.figures["agreement"] == 1.0 and 0 < done.figures["latency-vs-champion"] < 10, done.figures
        candidate = f"{world.endpoint}-v{kserve_models.ALSO_GOOD}"
        moves = _moves(world)
        assert ({world.endpoint: 100}, candidate) in moves, moves  # the shadow step: mirrored, no weight
        shares = [split.get(candidate, 0) for split, _ in moves]
        assert shares.index(10) < shares.index(50), moves
        users = [r for r in world.controller.requests if r.via == world.endpoint]
        first_answer = next(r for r in users if r.model == candidate)
        assert first_answer.mirrored, "the candidate answered a user before its shadow step passed"
        assert await world.deployer.champion() == kserve_models.ALSO_GOOD
        state = await world.serving.state(model)
        assert (state.stable_version, state.canary_version, state.ready) == (
            kserve_models.ALSO_GOOD,
            None,
            True,
        )
        assert state.stable_uri == await world.uri(kserve_models.ALSO_GOOD)
        _gone(world, kserve_models.ALSO_GOOD)

        # After promotion a rollback moves the endpoint Model itself back: Ready must be the old files'.
        async with world.controller.load(world.endpoint):
            asked = events.RollbackRequested(model=model, reason="drift alert", requested_by="alertmanager")
            await service_harness.deliver(world.engine, handlers.SERVICE, asked, world.ports)
            restored = f"{world.endpoint}_4"  # generations: placeholder, version 1, version 2, version 1
            serving = world.controller.models[world.endpoint].serving
            assert serving is not None and serving.internal == restored  # done only once Seldon serves it
            state = await world.serving.state(model)
            answered = await _answered_by(world, restored)
        assert (state.stable_version, state.stable_uri, state.ready) == (
            kserve_models.GOOD,
            await world.uri(kserve_models.GOOD),
            True,
        )
        assert answered.status == 200 and await world.deployer.champion() == kserve_models.GOOD
        assert world.api.refused == []


async def test_a_candidate_that_errors_on_every_request_is_rolled_back_at_10_percent(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, engine: AsyncEngine
) -> None:
    async with seldon_world.world(tmp_path, store, s3_mlflow, model, engine, steps="[10, 50, 100]") as world:
        async with world.controller.load(world.endpoint):
            await world.deployer.approve(kserve_models.BROKEN)
            done = await world.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED})

        assert done.state == rollouts.ROLLED_BACK, f"{done.state}: {done.reason} (step {done.step_index})"
        assert done.reason.startswith("analysis failed at 10%: success-rate"), done.reason
        broken = f"{world.endpoint}-v{kserve_models.BROKEN}"
        answered = [r for r in world.controller.requests if r.model == broken]
        assert answered and all(r.status == 500 for r in answered), answered[:3]
        assert max(split.get(broken, 0) for split, _ in _moves(world)) == 10
        assert await world.deployer.champion() == kserve_models.GOOD
        state = await world.serving.state(model)
        assert (state.stable_version, state.canary_version, state.ready) == (kserve_models.GOOD, None, True)
        _gone(world, kserve_models.BROKEN)
        assert world.api.refused == []


async def test_a_shadow_comparison_refuses_a_disagreeing_candidate_before_any_user_traffic_moves(
    tmp_path: Path, store: mlflow_s3.S3Store, s3_mlflow: str, model: str, engine: AsyncEngine
) -> None:
    async with seldon_world.world(
        tmp_path, store, s3_mlflow, model, engine, steps="[0, 10, 50, 100]", analysis=SHADOW_CHECKS
    ) as world:
        async with world.controller.load(world.endpoint):
            await world.deployer.approve(seldon_world.DISAGREEING)
            done = await world.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.PAUSED})

        assert done.state == rollouts.ROLLED_BACK, f"{done.state}: {done.reason} (step {done.step_index})"
        assert done.reason.startswith("analysis failed at 0%: "), done.reason
        assert "agreement 0 below 0.99" in done.reason and done.figures["agreement"] == 0.0, done.reason
        candidate = f"{world.endpoint}-v{seldon_world.DISAGREEING}"
        users = [r for r in world.controller.requests if r.via == world.endpoint]
        mirrored = [r for r in users if r.model == candidate and r.mirrored]
        assert len(mirrored) >= 2 and all(
            r.status == 200 for r in mirrored
        )  # it saw live traffic, and answered
        answered = [r for r in users if not r.mirrored]
        assert answered and all(r.model == world.endpoint for r in answered)  # no user got its answer
        assert all(split.get(candidate, 0) == 0 for split, _ in _moves(world))
        assert ({world.endpoint: 100}, candidate) in _moves(world)
        assert await world.deployer.champion() == kserve_models.GOOD
        _gone(world, seldon_world.DISAGREEING)
        assert world.api.refused == []
