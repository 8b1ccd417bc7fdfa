"""The deployer for real: MLflow registry, local serving with real predictions, rollout state in SQLite
and PostgreSQL. The deployer over KServe is tested against the KServe stand-in in test_kserve_rollouts."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, events
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.prometheus import LocalAnalysis
from mlcd.bus import runtime
from mlcd.bus.memory import MemoryBus
from mlcd.deployer import app, handlers
from mlcd.local.serving import LocalServing, PredictionFailed
from mlcd.policy.book import PolicyBook
from mlcd.ports import Flavors, ModelVersion, Serving
from mlcd.store import rollouts
from mlcd.store.tables import outbox
from tests.support import service_harness
from tests.support.serving_models import GOOD_ROWS, SHIFTED_ROWS, register_versions


@pytest.fixture(scope="module")
def model(mlflow_uri: str) -> str:
    name = f"wine_{uuid.uuid4().hex[:8]}"
    register_versions(mlflow_uri, name)
    return name


@dataclass
class Deployer:
    """The deployer's handlers and timer over real adapters, driven step by step by the test."""

    engine: AsyncEngine
    model: str
    ports: dict[str, Any]
    bus: MemoryBus

    @property
    def serving(self) -> Serving:
        serving: Serving = self.ports["serving"]
        return serving

    async def deliver(self, payload: events.Payload) -> None:
        await service_harness.deliver(self.engine, handlers.SERVICE, payload, self.ports)
        await self.relay()

    async def tick(self, *, due: bool = True, ports: dict[str, Any] | None = None) -> None:
        if due:
            async with self.engine.begin() as conn:
                await conn.execute(update(rollouts.rollouts).values(next_analysis_at=_past()))
        await service_harness.tick(self.engine, handlers.SERVICE, ports or self.ports)
        await self.relay()

    async def relay(self) -> None:
        await runtime.OutboxRelay(self.engine, self.bus).publish_pending()

    async def traffic(self, rows: list[list[float]], n: int = 20) -> None:
        serving = self.ports["serving"]
        if not isinstance(serving, LocalServing):
            return
        for _ in range(n):
            try:
                await serving.predict(self.model, rows)
            except PredictionFailed:
                pass

    async def emitted(self) -> list[tuple[str, dict[str, Any]]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.event_type, outbox.c.value)
                .where(outbox.c.subject == self.model)
                .order_by(outbox.c.seq)
            )
            return [(r.event_type.split(".")[2], json.loads(r.value)) for r in rows]

    async def kinds(self) -> list[str]:
        return [kind for kind, _ in await self.emitted()]

    async def champion(self) -> str | None:
        found = await self.ports["registry"].version_by_alias(self.model, "champion")
        return None if found is None else str(found.version)


def _past() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(seconds=1)


def _policies(folder: Path, model: str, mode: str = "serverless", guard: str = "0s") -> PolicyBook:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(
        f"model: {model}\nserving_name: {model.replace('_', '-')}\n"
        f"rollout:\n  mode: {mode}\n  steps: [10, 50, 100]\n  interval: 30s\n  guard: {guard}\n"
        "  thresholds: {max_error_rate: 0.05, max_p95_latency_s: 2.0, min_requests: 1}\n"
    )
    return PolicyBook(folder)


async def _reset_champion(deployer: Deployer) -> None:
    registry = deployer.ports["registry"]
    await registry.set_alias(deployer.model, "champion", "1")
    await deployer.serving.promote(
        deployer.model, "1", (await registry.get_version(deployer.model, "1")).source
    )


@pytest.fixture
async def local(engine: AsyncEngine, model: str, mlflow_uri: str, tmp_path: Path) -> AsyncIterator[Deployer]:
    serving = LocalServing(tmp_path / "home", mlflow_uri)
    ports = {
        "policies": _policies(tmp_path / "policies", model),
        "registry": MlflowRegistry(mlflow_uri),
        "serving": serving,
        "analysis": LocalAnalysis(serving),
    }
    deployer = Deployer(engine, model, ports, MemoryBus(events.TOPICS))
    await _reset_champion(deployer)
    yield deployer


def _payload(kind: str, emitted: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [data for k, data in emitted if k == kind]


async def test_clean_rollout_goes_through_every_step_and_moves_champion(local: Deployer) -> None:
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))
    state = await local.serving.state(local.model)
    assert (state.stable_version, state.canary_version, state.canary_percent) == ("1", "2", 10)

    await local.traffic(GOOD_ROWS)
    await local.tick()
    assert (await local.serving.state(local.model)).canary_percent == 50

    await local.traffic(GOOD_ROWS)
    await local.tick()

    emitted = await local.emitted()
    assert [k for k, _ in emitted] == [
        "rollout_started",
        "rollout_step_completed",
        "rollout_step_completed",
        "rollout_step_completed",
        "rollout_succeeded",
    ]
    assert [p["traffic_percent"] for p in _payload("rollout_step_completed", emitted)] == [10, 50, 100]
    assert _payload("rollout_step_completed", emitted)[0]["analysis"]["request-count"] > 0
    assert _payload("rollout_succeeded", emitted)[0]["previous_version"] == "1"
    state = await local.serving.state(local.model)
    assert (state.stable_version, state.canary_version) == ("2", None)
    assert await local.champion() == "2"
    version = await local.ports["registry"].get_version(local.model, "2")
    assert version.tags[handlers.PREVIOUS_CHAMPION_TAG] == "1"


async def test_failed_analysis_at_50_percent_rolls_back_and_keeps_champion(local: Deployer) -> None:
    await local.deliver(events.PromotionApproved(model=local.model, model_version="3"))
    await local.traffic(GOOD_ROWS)
    await local.tick()
    assert (await local.serving.state(local.model)).canary_percent == 50

    await local.traffic(SHIFTED_ROWS)  # a data shift the new version cannot handle
    await local.tick()

    emitted = await local.emitted()
    assert [k for k, _ in emitted][-1] == "rolled_back"
    (rolled_back,) = _payload("rolled_back", emitted)
    assert (rolled_back["from_version"], rolled_back["to_version"]) == ("3", "1")
    assert rolled_back["reason"].startswith("analysis failed at 50%: success-rate")
    assert rolled_back["figures"]["success-rate"] == 0.0
    state = await local.serving.state(local.model)
    assert (state.stable_version, state.canary_version) == ("1", None)
    assert await local.champion() == "1"


async def _promoted_under_guard(local: Deployer, tmp_path: Path, version: str) -> None:
    local.ports["policies"] = _policies(tmp_path / "guarded", local.model, guard="1h")
    await local.deliver(events.PromotionApproved(model=local.model, model_version=version))
    for _ in range(2):
        await local.traffic(GOOD_ROWS)
        await local.tick()
    assert await local.champion() == version
    async with local.engine.connect() as conn:
        guarded = await rollouts.running(conn, local.model)
    assert guarded is not None and guarded.phase == rollouts.GUARDING
    assert "rollout_succeeded" not in await local.kinds(), "the rollout is not done while its guard runs"


async def test_the_post_promotion_guard_rolls_back_a_promoted_version_that_starts_failing(
    local: Deployer, tmp_path: Path
) -> None:
    await _promoted_under_guard(local, tmp_path, "3")

    await local.traffic(SHIFTED_ROWS)  # after promotion, data the new version cannot handle
    await local.tick()

    (rolled_back,) = _payload("rolled_back", await local.emitted())
    assert (rolled_back["from_version"], rolled_back["to_version"]) == ("3", "1")
    assert rolled_back["reason"].startswith("post-promotion guard: success-rate"), rolled_back["reason"]
    assert (await local.serving.state(local.model)).stable_version == "1"
    assert await local.champion() == "1"


async def test_a_guard_window_that_passes_ends_the_rollout_succeeded(local: Deployer, tmp_path: Path) -> None:
    await _promoted_under_guard(local, tmp_path, "2")
    await local.traffic(GOOD_ROWS)
    await local.tick()
    assert "rollout_succeeded" not in await local.kinds(), "the window has not ended yet"

    async with local.engine.begin() as conn:
        await conn.execute(update(rollouts.rollouts).values(guard_until=_past()))
    await local.traffic(GOOD_ROWS)
    await local.tick()

    assert [k for k, _ in await local.emitted()].count("rollout_succeeded") == 1
    assert await local.champion() == "2"


async def test_drift_rollback_request_returns_a_finished_rollout_to_the_previous_version(
    local: Deployer,
) -> None:
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))
    await local.traffic(GOOD_ROWS)
    await local.tick()
    await local.traffic(GOOD_ROWS)
    await local.tick()
    assert await local.champion() == "2"

    await local.deliver(
        events.RollbackRequested(
            model=local.model, reason="drift: critical", requested_by="monitoring policy"
        )
    )

    (rolled_back,) = _payload("rolled_back", await local.emitted())
    assert (rolled_back["from_version"], rolled_back["to_version"]) == ("2", "1")
    assert "drift" in rolled_back["reason"]
    assert (await local.serving.state(local.model)).stable_version == "1"
    assert await local.champion() == "1"  # champion names what serves after any rollback
    pulled = await local.ports["registry"].get_version(local.model, "2")
    assert "drift" in pulled.tags[handlers.ROLLED_BACK_TAG]


class _Killed(BaseException):
    """The process dies: nothing after this point runs, the open transaction never commits."""


class _DiesAfterSideEffect:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        return self.serving.servable_problem(version, flavors)

    async def state(self, model: str) -> Any:
        return await self.serving.state(model)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        await self.serving.set_canary(model, version, artifact_uri, percent)
        raise _Killed()


class _RecordsMoves:
    """The serving port, recording each canary percent the deployer sets."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.percents: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.serving, name)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        self.percents.append(percent)
        await self.serving.set_canary(model, version, artifact_uri, percent)


async def test_a_deployer_killed_between_steps_resumes_without_repeating_a_step(local: Deployer) -> None:
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))
    await local.traffic(GOOD_ROWS)
    with pytest.raises(_Killed):  # dies after moving the canary to 50 %, before recording the move
        await local.tick(ports={**local.ports, "serving": _DiesAfterSideEffect(local.serving)})
    assert await local.kinds() == ["rollout_started"]

    moves = _RecordsMoves(local.serving)
    await local.tick(ports={**local.ports, "serving": moves})
    assert moves.percents == [], "the restarted deployer records the move it finds applied, never undoes it"
    assert (await local.serving.state(local.model)).canary_percent == 50
    assert [p["traffic_percent"] for p in _payload("rollout_step_completed", await local.emitted())] == [10]
    await local.traffic(GOOD_ROWS)
    await local.tick()
    await local.traffic(GOOD_ROWS)
    await local.tick()

    emitted = await local.emitted()
    assert [p["traffic_percent"] for p in _payload("rollout_step_completed", emitted)] == [10, 50, 100]
    assert [k for k, _ in emitted].count("rollout_succeeded") == 1
    assert await local.champion() == "2"


async def test_an_approval_during_a_rollout_waits_then_supersedes_it(local: Deployer) -> None:
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))
    await local.deliver(events.PromotionApproved(model=local.model, model_version="3"))
    assert (await local.serving.state(local.model)).canary_version == "2"

    await local.tick()

    emitted = await local.emitted()
    notices = [p["message"] for p in _payload("notice_raised", emitted)]
    assert "waits behind the rollout of version 2" in notices[0]
    assert "superseded by version 3" in notices[1]
    assert [p["model_version"] for p in _payload("rollout_started", emitted)] == ["2", "3"]
    state = await local.serving.state(local.model)
    assert (state.stable_version, state.canary_version, state.canary_percent) == ("1", "3", 10)
    async with local.engine.connect() as conn:
        history = await rollouts.history(conn, local.model)
    assert [(r.version, r.state) for r in history] == [("3", "running"), ("2", "superseded")]


async def test_manual_rollback_during_a_rollout_through_the_api(local: Deployer) -> None:
    tokens = {
        "oncall-token": auth.Identity("olga", frozenset({"oncall"})),
        "dev-token": auth.Identity("dan", frozenset()),
    }
    api = FastAPI()
    api.include_router(
        app.router(local.engine, None, local.ports["registry"], tokens.get, local.ports["policies"])
    )
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://mlcd") as http:
        refused = await http.post(
            f"/api/v1/models/{local.model}/rollback", json={}, headers={"Authorization": "Bearer dev-token"}
        )
        anonymous = await http.post(f"/api/v1/models/{local.model}/rollback", json={})
        unknown = await http.post(
            "/api/v1/models/no_such_model/rollback", json={}, headers={"Authorization": "Bearer oncall-token"}
        )
        accepted = await http.post(
            f"/api/v1/models/{local.model}/rollback",
            json={"reason": "latency complaints"},
            headers={"Authorization": "Bearer oncall-token"},
        )
        await _handle_requested_rollbacks(local)
        status = (
            await http.get(f"/api/v1/models/{local.model}", headers={"Authorization": "Bearer dev-token"})
        ).json()

    assert (refused.status_code, anonymous.status_code, accepted.status_code) == (403, 401, 202)
    assert unknown.status_code == 404 and "no policy" in unknown.json()["detail"]
    assert status["champion"] == "1"
    assert status["rollout"] is None
    assert status["last_rollout"]["state"] == "rolled_back"
    assert status["events"][0]["type"] == events.RolledBack.type
    assert status["events"][0]["data"]["reason"] == "latency complaints (requested by olga)"
    state = await local.serving.state(local.model)
    assert (state.stable_version, state.canary_version) == ("1", None)


async def _handle_requested_rollbacks(deployer: Deployer) -> None:
    subscription = await deployer.bus.subscribe("probe", [events.RollbackRequested.topic()])
    await deployer.relay()
    records = await subscription.poll(100, 1.0)
    for record in records:
        decoded = events.decode(record)
        assert not isinstance(decoded, events.DecodeError)
        if isinstance(decoded.data, events.RollbackRequested):
            await deployer.deliver(decoded.data)


async def test_on_call_pauses_resumes_aborts_and_retries_a_rollout_through_the_api(local: Deployer) -> None:
    from mlcd import http as mlcd_http

    tokens = {
        "oncall-token": auth.Identity("olga", frozenset({"oncall"})),
        "dev-token": auth.Identity("dan", frozenset()),
    }
    api = FastAPI()
    mlcd_http.install_error_handlers(api)
    api.include_router(
        app.router(
            local.engine, None, local.ports["registry"], tokens.get, local.ports["policies"], local.serving
        )
    )
    oncall = {"Authorization": "Bearer oncall-token"}
    await local.deliver(events.PromotionApproved(model=local.model, model_version="2"))

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://mlcd") as http:
        base = f"/api/v1/models/{local.model}/rollout"
        refused = await http.post(f"{base}/pause", headers={"Authorization": "Bearer dev-token"})
        nonsense = await http.post(f"{base}/explode", headers=oncall)
        paused = await http.post(f"{base}/pause", headers=oncall)
        again = await http.post(f"{base}/pause", headers=oncall)
        await local.traffic(GOOD_ROWS)
        await local.tick()  # a paused rollout is not analysed
        held = (await http.get(f"/api/v1/models/{local.model}", headers=oncall)).json()
        resumed = await http.post(f"{base}/resume", headers=oncall)
        aborted = await http.post(f"{base}/abort", headers=oncall)
        await local.tick()
        after_abort = (await http.get(f"/api/v1/models/{local.model}", headers=oncall)).json()
        retried = await http.post(f"{base}/retry", headers=oncall)

    assert (refused.status_code, nonsense.status_code, paused.status_code) == (403, 422, 202)
    assert again.status_code == 409 and "paused already" in str(again.json())
    assert held["rollout"]["state"] == "paused" and held["rollout"]["traffic_percent"] == 10
    assert held["serving"]["canary_version"] == "2" and held["serving"]["canary_percent_observed"] == 10
    assert (resumed.status_code, aborted.status_code, retried.status_code) == (202, 202, 202)
    assert after_abort["last_rollout"]["state"] == "rolled_back"
    assert after_abort["last_rollout"]["reason"] == "aborted by on-call"
    assert after_abort["serving"]["canary_version"] is None and after_abort["champion"] == "1"
    assert retried.json()["version"] == "2" and retried.json()["event_id"]
    emitted = await local.emitted()
    kinds = [kind for kind, _ in emitted]
    assert kinds.count("approved") == 1  # the retry's approval, for the deployer to roll out
    # pause and resume take effect at once, and are told at once (the page shows each one's event)
    [told_paused] = [data for kind, data in emitted if kind == "rollout_paused"]
    [told_resumed] = [data for kind, data in emitted if kind == "rollout_resumed"]
    where = {"model": local.model, "model_version": "2", "traffic_percent": 10}
    assert told_paused == {**where, "reason": "paused by olga", "figures": {}}
    assert told_resumed == {**where, "resumed_by": "olga"}
    assert paused.json()["event_id"] and resumed.json()["event_id"] and aborted.json()["event_id"] is None
