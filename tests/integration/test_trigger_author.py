"""The trigger's author reaches the gate through the real handlers, and cannot approve their own candidate.

A GitLab push hook and a MinIO notification, each as the source sends it, go through ingest's parsers and
the builder, validator, trainer and gatekeeper handlers (fake GitLab, fake KFP API, real MLflow, real
expectation suite); nothing sets the author by hand. The author is then refused on the API and in a
`/mlcd approve` comment on the merge request the gate links to, and the audit says who and through what.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from mlflow import MlflowClient
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, events
from mlcd.adapters import objectstore
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import LogNotifier
from mlcd.adapters.optuna_tuner import OptunaTuner
from mlcd.adapters.training_jobs import NoTrainingJobs
from mlcd.builder import handlers as builder
from mlcd.config import Settings
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.gatekeeper.app import router
from mlcd.ingest import gitlab as gitlab_hooks
from mlcd.ingest import minio as minio_hooks
from mlcd.local.serving import LocalServing
from mlcd.policy.book import PolicyBook
from mlcd.store import gates, training
from mlcd.trainer import decisions
from mlcd.trainer import handlers as trainer
from mlcd.validator import handlers as validator
from tests.conftest import unique
from tests.fakes import kfp_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import flows, service_harness

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
PROJECT = "ml/wine-quality"
PUSHED = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70"
FEATURE_HEAD = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
POLICY = """
model: {model}
code: {{project: ml/wine-quality, paths: ["pipelines/wine_quality/**"], branch: main}}
data: {{bucket: landing, prefix: {model}/, suite: pipelines/wine_quality/expectations.json}}
training: {{pipeline: wine_quality}}
promotion:
  rules: [{{name: accuracy_floor, expr: "candidate.metrics.accuracy >= 0.5"}}]
approval: {{required: true, groups: [oncall]}}
"""
# Token name, groups, GitLab username. Alice pushes under her GitLab name; Dana uploads with her MinIO
# user `dana`, the name of her token.
TOKENS = [("alice-laptop", ["oncall"], "alice"), ("dana", ["oncall"], ""), ("olivia", ["oncall"], "")]


def identify(presented: str | None) -> auth.Identity | None:
    entries = [
        auth.TokenEntry(
            name=name,
            groups=groups,
            gitlab_username=username or None,
            token_sha256=hashlib.sha256(f"token-{name}".encode()).hexdigest(),
        )
        for name, groups, username in TOKENS
    ]
    return auth.TokenBook(entries).identify(presented)


@pytest.fixture(scope="module")
def clean_batch(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("batches")
    script = REPO / "pipelines/wine_quality/make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    return (out / "clean.csv").read_bytes()


@pytest.fixture
def kfp() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        yield server


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    sources = {
        f"pipelines/wine_quality/{p.name}": p.read_bytes()
        for p in (REPO / "pipelines/wine_quality").glob("*.py")
    }
    with FakeGitLab() as fake:
        fake.add_project(PROJECT, files=sources)
        fake.add_member(PROJECT, "alice", 40)  # a Maintainer: allowed to approve, except her own change
        fake.add_merge_request(
            PROJECT, 5, sha=FEATURE_HEAD, author="alice", state="merged", merge_commit_sha=PUSHED
        )
        yield fake


@pytest.fixture
async def chain(
    engine: AsyncEngine, tmp_path: Path, kfp: kfp_api.FakeKfp, gitlab: FakeGitLab, mlflow_uri: str
) -> AsyncIterator[Chain]:
    model = unique("wine").replace("-", "_")
    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    (repo / "policies" / f"{model}.yaml").write_text(POLICY.format(model=model))
    (repo / "pipelines/wine_quality").mkdir(parents=True)
    shutil.copy(REPO / "pipelines/wine_quality/expectations.json", repo / "pipelines/wine_quality")
    settings = Settings(
        home=tmp_path / "home",
        policies_dir=repo / "policies",
        pipelines_dir=repo / "pipelines",
        mlflow_tracking_uri=mlflow_uri,
        kfp_host=kfp.url,
        api_url="http://mlcd.test",
    )
    code_host = GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10)
    policies = PolicyBook(repo / "policies")
    ports: dict[str, Any] = {
        "settings": settings,
        "policies": policies,
        "code_host": code_host,
        "orchestrator": KfpClientOrchestrator(kfp.url, timeout_s=10),
        "objects": objectstore.build(settings),
        "registry": MlflowRegistry(mlflow_uri),
        "serving": LocalServing(tmp_path / "home", mlflow_uri),
        "notifier": LogNotifier(),
        "tuner": OptunaTuner(tmp_path / "home", {}),
        "jobs": NoTrainingJobs(),
    }
    app = FastAPI()
    app.include_router(router(engine, None, policies, identify, code_host=code_host))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mlcd.test") as api:
        yield Chain(engine, ports, model, kfp, gitlab, mlflow_uri, api)


class Chain:
    def __init__(
        self,
        engine: AsyncEngine,
        ports: dict[str, Any],
        model: str,
        kfp: kfp_api.FakeKfp,
        gitlab: FakeGitLab,
        mlflow_uri: str,
        api: httpx.AsyncClient,
    ) -> None:
        self.engine, self.ports, self.model = engine, ports, model
        self.kfp, self.gitlab, self.mlflow_uri, self.api = kfp, gitlab, mlflow_uri, api

    async def handle(self, service: Any, envelope: events.Envelope[Any]) -> list[events.Payload]:
        return await service_harness.deliver(
            self.engine, service, envelope.data, self.ports, event_id=envelope.id
        )

    async def train(self, trigger: events.Envelope[Any]) -> events.TrainingSucceeded:
        """The trainer runs the trigger on the fake KFP; the run registers a version in MLflow."""
        [started] = await self.handle(trainer.SERVICE, trigger)
        assert isinstance(started, events.TrainingStarted)
        client = MlflowClient(tracking_uri=self.mlflow_uri)
        run = client.create_run(client.create_experiment(unique("exp")))
        client.log_metric(run.info.run_id, "accuracy", 0.9)
        try:
            client.create_registered_model(self.model)
        except Exception:  # MlflowException RESOURCE_ALREADY_EXISTS
            pass
        version = client.create_model_version(
            self.model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        ).version
        client.set_registered_model_alias(self.model, decisions.run_alias(started.run_name), version)
        self.kfp.finish(self.kfp.run_named(started.run_name)["run_id"], "SUCCEEDED")

        async def reported() -> list[events.Payload]:
            return await service_harness.tick(self.engine, trainer.SERVICE, self.ports)

        [succeeded] = await flows.eventually(reported, "the trainer reporting the run")
        assert isinstance(succeeded, events.TrainingSucceeded)
        return succeeded

    async def open_gate(self, succeeded: events.TrainingSucceeded) -> gates.Gate:
        emitted = await self.handle(gatekeeper.SERVICE, events.new_event(succeeded, source="mlcd/trainer"))
        [opened] = [e for e in emitted if isinstance(e, events.GateOpened)]
        async with self.engine.connect() as conn:
            gate = await gates.get(conn, opened.gate_id)
        assert gate is not None
        return gate

    async def approve(self, gate_id: str, token_name: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer token-{token_name}"}
        return await self.api.post(f"/api/v1/gates/{gate_id}/approve", json={}, headers=headers)

    async def audit(self, gate_id: str) -> list[tuple[str, str, str, str, str]]:
        async with self.engine.connect() as conn:
            entries = await gates.audit_log(conn, gate_id)
        return [(e.actor, e.via, e.action, e.outcome, e.reason) for e in entries]


def _push_hook(model_path: str) -> tuple[bytes, dict[str, str]]:
    body = json.loads((FIXTURES / "gitlab_push.json").read_text())
    body.update(after=PUSHED, checkout_sha=PUSHED, user_username="alice", user_name="Alice")
    body["project"]["path_with_namespace"] = PROJECT
    body["commits"] = [
        {**body["commits"][0], "id": PUSHED, "added": [], "removed": [], "modified": [model_path]}
    ]
    body["total_commits_count"] = 1
    headers = {"x-gitlab-event": "Push Hook", "idempotency-key": unique("push")}
    return json.dumps(body).encode(), headers


def _note_hook(username: str, text: str, iid: int) -> tuple[bytes, dict[str, str]]:
    body = json.loads((FIXTURES / "gitlab_note_mr_approve.json").read_text())
    body["user"]["username"] = username
    body["object_attributes"]["note"] = text
    body["project"]["path_with_namespace"] = PROJECT
    body["merge_request"]["iid"] = iid
    return json.dumps(body).encode(), {"x-gitlab-event": "Note Hook", "idempotency-key": unique("note")}


async def test_the_pusher_may_not_approve_the_candidate_on_the_api_nor_in_its_merge_request(
    chain: Chain,
) -> None:
    async with chain.engine.begin() as conn:  # a batch was validated before: the new pipeline trains on it
        await training.lock_model(conn, chain.model)
        earlier = training.Trigger(
            chain.model, "earlier", f"s3://landing/{chain.model}/earlier.csv", "validated"
        )
        await training.remember_data(conn, earlier)
    body, headers = _push_hook("pipelines/wine_quality/pipeline.py")

    [pushed] = gitlab_hooks.parse(body, headers, chain.ports["policies"])
    [published] = await chain.handle(builder.SERVICE, pushed)
    assert isinstance(published, events.PipelinePublished) and published.author == "alice"
    succeeded = await chain.train(events.new_event(published, source="mlcd/builder"))
    gate = await chain.open_gate(succeeded)

    assert (succeeded.author, succeeded.commit) == ("alice", PUSHED)
    assert (gate.author, gate.merge_request_iid) == ("alice", 5)
    assert gate.merge_request_url == f"{chain.gitlab.url}/{PROJECT}/-/merge_requests/5"
    [announced] = chain.gitlab.notes(PROJECT, 5)
    assert f"/mlcd approve {gate.id}` (or" in announced["body"] and "caused by alice" in announced["body"]

    own = await chain.approve(gate.id, "alice-laptop")
    comment_body, comment_headers = _note_hook("alice", f"/mlcd approve {gate.id}", 5)
    [comment] = gitlab_hooks.parse(comment_body, comment_headers, chain.ports["policies"])
    await chain.handle(gatekeeper.SERVICE, comment)
    other = await chain.approve(gate.id, "olivia")

    assert own.status_code == 403 and own.json()["error"] == (
        "alice is the author of the change and may not approve it"
    )
    assert other.status_code == 200 and other.json()["gate"]["state"] == "approved"
    assert [entry[:4] for entry in await chain.audit(gate.id)] == [
        ("mlcd", "policy", "open", "accepted"),
        ("alice", "api", "approve", "refused"),
        ("alice", "gitlab", "approve", "refused"),
        ("olivia", "api", "approve", "accepted"),
    ]
    assert (await chain.audit(gate.id))[2][4] == "the author of the change may not approve it"
    replies = [n["body"] for n in chain.gitlab.notes(PROJECT, 5)][1:]
    assert (
        len(replies) == 1 and "by @alice refused: the author of the change may not approve it" in replies[0]
    )


async def test_the_uploader_of_the_batch_may_not_approve_the_candidate_trained_on_it(
    chain: Chain, clean_batch: bytes, tmp_path: Path
) -> None:
    package = tmp_path / "package.yaml"  # an earlier push published the pipeline
    package.write_text("pipelineInfo:\n  name: wine-quality\n")
    await chain.ports["orchestrator"].publish("wine_quality", "0123abcd", package)
    key = f"{chain.model}/batch 01.csv"
    await chain.ports["objects"].put("landing", key, clean_batch, "text/csv")
    notification = json.loads((FIXTURES / "minio_put_encoded_key.json").read_text())
    record = notification["Records"][0]
    record["userIdentity"] = {"principalId": "dana"}  # MinIO: the access key, or a service account's parent
    record["s3"]["object"].update(
        key=key.replace("/", "%2F").replace(" ", "+"),
        size=len(clean_batch),
        eTag=hashlib.md5(clean_batch).hexdigest(),  # what the folder store's object has (MinIO: its MD5)
    )
    del record["s3"]["object"]["versionId"]  # the folder store is a bucket without versioning

    [arrived] = minio_hooks.parse(json.dumps(notification).encode(), chain.ports["policies"])
    [validated] = await chain.handle(validator.SERVICE, arrived)
    assert isinstance(validated, events.DataValidated), validated
    succeeded = await chain.train(events.new_event(validated, source="mlcd/validator"))
    gate = await chain.open_gate(succeeded)

    assert (validated.author, succeeded.author, gate.author) == ("dana", "dana", "dana")
    assert (gate.commit, gate.merge_request_url) == ("", "")  # data-triggered: no commit, no merge request
    own = await chain.approve(gate.id, "dana")
    other = await chain.approve(gate.id, "olivia")
    assert own.status_code == 403 and "dana is the author of the change" in own.json()["error"]
    assert other.status_code == 200
    assert [entry[:4] for entry in await chain.audit(gate.id)][1:] == [
        ("dana", "api", "approve", "refused"),
        ("olivia", "api", "approve", "accepted"),
    ]
