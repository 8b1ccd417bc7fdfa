"""`mlcd explain` and `POST /api/v1/explain`: for a delivery of each source and for a candidate judged
against a real MLflow registry, what explain says mlcd would emit (and, for a candidate, each rule's
outcome, the approval asked, the `servable` check) is what the chain then journals when the same payload
arrives; nothing is written by explaining."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as kubernetes
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mlcd import auth, bootstrap, cli, events, explain, explain_api, ports
from mlcd import http as mlcd_http
from mlcd.adapters import kserve
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.bus.memory import MemoryBus
from mlcd.config import Settings
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.ingest.app import router as ingest_router
from mlcd.local.serving import LocalServing
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import outbox
from mlcd.store.tables import outbox as outbox_table
from tests.fakes import kube_api
from tests.support import serving_models
from tests.support import webhook_credentials as credentials
from tests.support.flows import eventually, publish
from tests.support.ingest_app import serving as serving_app

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"t": auth.Identity("rita", frozenset({"developers"}))}
KEYS = credentials.WebhookSecrets.fresh()


class _NoRegistry:
    async def get_version(self, model: str, version: str) -> Any:
        raise AssertionError("not asked in these tests")

    async def version_by_alias(self, model: str, alias: str) -> None:
        return None

    async def flavors(self, version: Any) -> dict[str, Any]:
        raise AssertionError("not asked in these tests")


@pytest.fixture
async def chain(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine]]:
    """Ingest, the explain route and the gatekeeper on the in-process bus (the builder, validator and
    trainer are not running: their outcomes are what explain lists as `possible`)."""
    settings = Settings(home=tmp_path / "home", policies_dir=REPO / "policies", **KEYS.settings())
    policies = PolicyBook(settings.policies_dir)
    bus = MemoryBus(events.TOPICS)
    ports = {
        "policies": policies,
        "registry": _NoRegistry(),
        "serving": LocalServing(settings.home, "http://127.0.0.1:9"),
        "code_host": None,
        "notifier": None,
    }
    host = ServiceHost(settings, [gatekeeper.SERVICE], ports, bus=bus, engine=engine)
    await host.start()
    app = mlcd_http.create_app(
        [
            ingest_router(settings=settings, policies=policies, bus=bus, engine=engine, waker=host.waker),
            explain_api.router(lambda: engine, _NoRegistry(), policies, TOKENS.get),  # type: ignore[arg-type]
        ],
        host.readiness,
    )
    try:
        async with serving_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client, engine
    finally:
        await host.stop()


async def _rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(outbox_table)) or 0)


@pytest.mark.parametrize("source", ["gitlab", "minio", "alertmanager"])
async def test_explain_says_what_the_chain_then_does(
    chain: tuple[httpx.AsyncClient, AsyncEngine], source: credentials.Source
) -> None:
    client, engine = chain
    sent = credentials.delivery(source, KEYS, "right")
    document = {"source": source, "headers": sent.headers, "body": json.loads(sent.body)}

    rows_before = await _rows(engine)
    answer = await client.post("/api/v1/explain", json=document, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 200, answer.text
    told = answer.json()
    assert told["emits"], told
    assert await _rows(engine) == rows_before  # explaining wrote nothing

    delivered = await client.post(sent.path, content=sent.body, headers=sent.headers)
    assert delivered.status_code == 202, delivered.text

    async def journaled() -> list[str] | None:
        async with engine.connect() as conn:
            found = [e["type"] for _, e in await outbox.journal(conn, limit=100, ascending=True)]
        return found if len(found) >= len(told["emits"]) else None

    chain_did = await eventually(journaled, f"the chain's events for the {source} delivery")
    assert sorted(chain_did) == sorted(told["emits"]), (told, chain_did)  # services run side by side
    if source == "alertmanager":
        assert events.RetrainRequested.type in told["emits"]  # severity warning → retrain
        again = await client.post("/api/v1/explain", json=document, headers={"Authorization": "Bearer t"})
        debounced = [t for t in told["emits"] if t != events.RetrainRequested.type]
        assert again.json()["emits"] == debounced  # the retrain is debounced now
        assert any("debounced" in step for step in again.json()["steps"])


def test_explain_offline_checks_expectations_for_a_policy_repository_ci(tmp_path: Path) -> None:
    sent = credentials.delivery("alertmanager", KEYS, "right")
    file = tmp_path / "alert.http"
    headers = "".join(f"{k}: {v}\n" for k, v in sent.headers.items())
    file.write_bytes(f"POST {sent.path} HTTP/1.1\n{headers}\n".encode() + sent.body)
    env = {"MLCD_POLICIES_DIR": str(REPO / "policies")}
    runner = CliRunner()
    expected = [events.AlertFired.type, events.RetrainRequested.type, events.DeliveryIgnored.type]

    ok = runner.invoke(
        cli.app,
        ["explain", str(file), "--offline", *[word for t in expected for word in ("--expect", t)]],
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    assert "severity warning → retrain" in ok.stdout

    wrong = runner.invoke(
        cli.app,
        [
            "explain",
            str(file),
            "--offline",
            "--expect",
            events.AlertFired.type,
            "--expect",
            events.DeliveryIgnored.type,
        ],
        env=env,
    )
    assert wrong.exit_code == 1
    assert (
        wrong.stderr
        == f"error: not what was expected: emitted but not expected: {events.RetrainRequested.type}\n"
    )

    cloudevent = tmp_path / "retrain.json"
    retrain = events.new_event(events.RetrainRequested(model="wine_quality", reason="r"), source="t")
    cloudevent.write_text(json.dumps(retrain.structured(), default=str))
    shown = runner.invoke(cli.app, ["explain", str(cloudevent), "--offline", "--json"], env=env)
    assert json.loads(shown.stdout)["possible"] == [events.TrainingStarted.type]

    garbage = tmp_path / "garbage.json"
    garbage.write_text("[1, 2]")
    refused = runner.invoke(cli.app, ["explain", str(garbage), "--offline"], env=env)
    assert refused.exit_code == 1 and refused.stderr.startswith(
        f"error: {str(garbage)!r}: expected a JSON object"
    )


def test_an_unparseable_delivery_is_explained_as_parked() -> None:
    given = explain.read_input(
        json.dumps(
            {"source": "gitlab", "headers": {"x-gitlab-event": "Push Hook"}, "body": {"nope": 1}}
        ).encode()
    )
    import asyncio

    found = asyncio.run(explain.explain(given, PolicyBook(REPO / "policies"), None, None))
    assert found.emits == [] and "parks the delivery on the DLQ" in found.steps[0]


async def test_a_merge_request_is_explained_as_the_builder_then_checks_it() -> None:
    """A merge-request hook names no paths: the builder asks GitLab for the diff first, and explain says so;
    once the diff is known, only the models it touches are named."""
    policies = PolicyBook(REPO / "policies")
    hook = events.MergeRequestChanged(
        project="ml/wine-quality",
        project_id=1,
        iid=5,
        action="open",
        source_branch="f",
        target_branch="main",
        commit="c0ffee" * 7,
        author=events.GitUser(username="alice"),
    )
    unknown = await explain.explain(events.new_event(hook, source="t"), policies, None, None)
    assert any("asks GitLab for merge request !5's diff" in step for step in unknown.steps), unknown.steps
    docs_only = hook.model_copy(update={"changed_paths": ["README.md"], "paths_complete": True})
    known = await explain.explain(events.new_event(docs_only, source="t"), policies, None, None)
    assert any("compiles (without publishing) no model" in step for step in known.steps), known.steps


# --- candidates against a real MLflow registry, through the composition root ---------------------------

CANDIDATE_POLICY = """
model: {model}
serving_name: wine-isvc
promotion:
  rules:
    - name: accuracy_floor
      expr: candidate.metrics.accuracy >= 0.5
    - name: no_regression
      expr: champion == null || candidate.metrics.accuracy >= champion.metrics.accuracy - 0.5
approval:
  required: true
  groups: [oncall]
  count: 2
  timeout: 12h
"""


@pytest.fixture(scope="module")
def registered(mlflow_uri: str) -> str:
    """A model with versions 1 to 4 in the real MLflow server (artifacts proxied: `mlflow-artifacts:/`),
    version 1 its champion."""
    from mlflow import MlflowClient

    model = f"explained_{uuid.uuid4().hex[:8]}"
    serving_models.register_versions(mlflow_uri, model)
    MlflowClient(tracking_uri=mlflow_uri).set_registered_model_alias(model, "champion", "1")
    return model


@asynccontextmanager
async def _composed(
    root: Path,
    store_url: str,
    mlflow_uri: str,
    model: str,
    serving: Callable[[PolicyBook], ports.Serving] | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, bootstrap.System]]:
    """`mlcd serve ingest` with the gatekeeper beside it, built by the composition root against the real
    MLflow server; `serving` replaces the embedded local serving (which every logged pyfunc passes)."""
    (root / "policies").mkdir()
    (root / "policies" / f"{model}.yaml").write_text(CANDIDATE_POLICY.format(model=model))
    tokens = root / "tokens.yaml"
    digest = hashlib.sha256(b"t").hexdigest()
    tokens.write_text(yaml.safe_dump([{"name": "rita", "groups": ["developers"], "token_sha256": digest}]))
    configured = Settings(
        home=root / "home",
        policies_dir=root / "policies",
        database_url=store_url,
        mlflow_tracking_uri=mlflow_uri,
        api_tokens_file=tokens,
        **KEYS.settings(),
    )
    built = bootstrap.build_ports(configured)
    if serving is not None:
        built = dataclasses.replace(built, serving=serving(built.policies))
    system = bootstrap.system(configured, [gatekeeper.SERVICE], http=True, ports=built)
    assert system.app is not None
    await system.host.start()
    try:
        async with serving_app(system.app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield client, system
    finally:
        await system.host.stop()
        await system.close()


async def _explained(client: httpx.AsyncClient, document: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post("/api/v1/explain", json=document, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _last_seq(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        journaled = await outbox.journal(conn, limit=1)
    return journaled[0][0] if journaled else 0


async def _journaled_after(engine: AsyncEngine, seq: int, count: int) -> list[dict[str, Any]]:
    async def journaled() -> list[dict[str, Any]] | None:
        async with engine.connect() as conn:
            found = [e for _, e in await outbox.journal(conn, after_seq=seq, limit=100, ascending=True)]
        return found if len(found) >= count else None

    return await eventually(journaled, f"{count} events journaled after seq {seq}")


def _as_the_chain_judged(judged: dict[str, Any], decided: dict[str, Any]) -> None:
    """The judgement explain predicted is the one the gatekeeper's event carries."""
    assert decided["model_version"] == judged["model_version"]
    assert decided["rules"] == judged["rules"]
    if "champion_version" in decided:  # GateOpened
        assert decided["champion_version"] == judged["champion_version"]
        approval = judged["approval"]
        assert (decided["approvals_required"], decided["approver_groups"], decided["author"]) == (
            approval["count"],
            approval["groups"],
            approval["author"],
        )


def _cloudevent(payload: events.Payload) -> tuple[events.Envelope[Any], dict[str, Any]]:
    envelope = events.new_event(payload, source="mlcd/trainer")
    return envelope, json.loads(json.dumps(envelope.structured(), default=str))


async def test_explain_says_what_the_chain_then_does_with_candidates_against_a_real_registry(
    store_url: str, tmp_path: Path, mlflow_uri: str, registered: str
) -> None:
    """An MLflow registry webhook (a version registered outside mlcd) and then a TrainingSucceeded
    CloudEvent: the rules against the champion in MLflow, the gate and its approvers, and the older gate
    the newer candidate supersedes, as explain says and as the chain then does."""
    async with _composed(tmp_path, store_url, mlflow_uri, registered) as (client, system):
        engine = system.host.engine
        body = json.loads((credentials.FIXTURES / credentials.BODIES["mlflow"]).read_text())
        body["data"] |= {"name": registered, "version": "2"}
        sent = credentials.delivery("mlflow", KEYS, "right", body=json.dumps(body).encode())

        rows_before = await _rows(engine)
        told = await _explained(client, {"source": "mlflow", "headers": sent.headers, "body": body})
        assert await _rows(engine) == rows_before  # explaining wrote nothing
        assert told["emits"] == [events.CandidateRegistered.type, events.GateOpened.type], told
        (judged,) = told["candidates"]
        assert (judged["model_version"], judged["champion_version"], judged["verdict"]) == ("2", "1", "gate")
        assert [(r["name"], r["passed"]) for r in judged["rules"]] == [
            ("accuracy_floor", True),
            ("no_regression", True),
        ]
        assert judged["approval"] == {"count": 2, "groups": ["oncall"], "timeout_s": 43200.0, "author": ""}
        assert not any("not checked here" in step for step in told["steps"])  # servable was checked

        seq = await _last_seq(engine)
        delivered = await client.post(sent.path, content=sent.body, headers=sent.headers)
        assert delivered.status_code == 202, delivered.text
        chain_did = await _journaled_after(engine, seq, len(told["emits"]))
        assert [e["type"] for e in chain_did] == told["emits"]
        _as_the_chain_judged(judged, chain_did[1]["data"])
        first_gate = chain_did[1]["data"]["gate_id"]

        trained, document = _cloudevent(
            events.TrainingSucceeded(
                model=registered,
                run_id="run-3",
                model_version="3",
                metrics={"accuracy": 0.9},
                data_uri="s3://landing/b.csv",
                commit="c0ffee" * 7,
                author="alice",
            )
        )
        told = await _explained(client, document)
        # A gate for version 3, and version 2's gate closes as superseded (a PromotionRejected).
        assert told["emits"] == [
            events.TrainingSucceeded.type,
            events.GateOpened.type,
            events.PromotionRejected.type,
        ], told
        (judged,) = told["candidates"]
        assert (judged["model_version"], judged["champion_version"], judged["verdict"]) == ("3", "1", "gate")
        assert judged["approval"]["author"] == "alice"
        assert any(f"closes the older open gate {first_gate}" in step for step in told["steps"])
        assert any("alice (the change's author) cannot approve" in step for step in told["steps"])

        seq = await _last_seq(engine)
        await publish(system.host.bus, trained)
        chain_did = await _journaled_after(engine, seq, len(told["emits"]) - 1)
        assert [e["type"] for e in chain_did] == told["emits"][1:]  # the CloudEvent itself was given
        _as_the_chain_judged(judged, chain_did[0]["data"])
        superseded = chain_did[1]["data"]
        assert (superseded["gate_id"], superseded["model_version"]) == (first_gate, "2")


async def test_explain_predicts_the_servable_rejection_the_chain_then_makes(
    store_url: str, tmp_path: Path, mlflow_uri: str, registered: str
) -> None:
    """KServe cannot download MLflow's proxied `mlflow-artifacts:/` URI: given the serving port (as the
    composition root gives the API), explain predicts the rejection on rule `servable` with KServe's
    reason, and the gatekeeper then rejects the same way; without it, explain says it did not check."""

    def kserve_serving(policies: PolicyBook) -> ports.Serving:
        configuration = kubernetes.Configuration(host=cluster.url)
        return kserve.KServeServing(lambda: kubernetes.ApiClient(configuration), "models", policies)

    async with (
        kube_api.running() as cluster,
        _composed(tmp_path, store_url, mlflow_uri, registered, kserve_serving) as (client, system),
    ):
        engine = system.host.engine
        trained, document = _cloudevent(
            events.TrainingSucceeded(
                model=registered, run_id="run-2", model_version="2", metrics={}, data_uri="s3://landing/b.csv"
            )
        )
        told = await _explained(client, document)
        assert told["emits"] == [events.TrainingSucceeded.type, events.PromotionRejected.type], told
        (judged,) = told["candidates"]
        assert judged["verdict"] == "reject"
        servable = judged["rules"][-1]
        assert (servable["name"], servable["passed"]) == ("servable", False)
        assert "proxied artifact scheme" in servable["error"], servable
        assert servable["values"]["artifact_uri"].startswith("mlflow-artifacts:/")
        assert any(step.strip().startswith("FAIL  servable:") for step in told["steps"]), told["steps"]
        assert any("rejects it: rules failed: servable (" in step for step in told["steps"])

        seq = await _last_seq(engine)
        await publish(system.host.bus, trained)
        (rejected,) = await _journaled_after(engine, seq, 1)
        assert rejected["type"] == events.PromotionRejected.type
        _as_the_chain_judged(judged, rejected["data"])
        assert rejected["data"]["reason"].startswith("rules failed: servable (")

        # Without the serving port (an in-process caller that has none), explain says what it left out.
        blind = await explain.explain(
            trained, PolicyBook(tmp_path / "policies"), MlflowRegistry(mlflow_uri), engine
        )
        assert blind.emits == [events.TrainingSucceeded.type, events.GateOpened.type]
        assert any("rule `servable`" in step and "not checked here" in step for step in blind.steps)
