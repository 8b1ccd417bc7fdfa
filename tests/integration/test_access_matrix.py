"""Who may do what: every HTTP endpoint and every API command against no, a wrong, a wrong-group and the right
credential; every webhook against no, a wrong and the right secret; merge-request approvals; no secret in
logs, answers, events or dead letters; secrets compared with hmac.compare_digest and nothing else.

The endpoints are read from the app `mlcd serve ingest` and `mlcd up` serve, and the commands from the `mlcd`
command tree, so one added without a place in these tables fails the suite until someone decides who may
call it.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import hmac
import inspect
import io
import json
import logging
import os
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pytest
import structlog
import typer.main
import yaml
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

import mlcd
from mlcd import bootstrap, cli, events, logs
from mlcd.config import Settings
from mlcd.errors import Unauthorized
from mlcd.ingest.authentication import authenticate
from mlcd.ports import Flavors, ModelVersion
from mlcd.store import database, gates
from tests.conftest import unique
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import ingest_app, minio_gateway, processes, secret_scan
from tests.support.mlcd_service import MLCD, ServiceProcess
from tests.support.webhook_credentials import SOURCES, VARIANTS, Delivery, WebhookSecrets, delivery

REPO = Path(__file__).resolve().parents[2]
MODEL = "access_model"
CODED_MODEL, CODED_PROJECT = "coded_model", "ml/coded"
APPROVERS = "ml-leads"  # the approver group access_model's policy names; rollbacks need "oncall"
IDENTITIES = {"lead": [APPROVERS], "olivia": ["oncall"], "dev": ["developers"], "root": ["admin"]}
Credential = Literal["none", "wrong", "wrong-group", "right"]
CREDENTIALS: tuple[Credential, ...] = ("none", "wrong", "wrong-group", "right")


# --- who may call what --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How an endpoint is guarded and what a caller it lets in gets."""

    kind: Literal["public", "webhook", "token", "group"]
    allowed: int | tuple[int, ...] = 200  # the status(es) a permitted caller gets
    groups: tuple[str, ...] = ()  # for "group": a token in one of these (or admin) may
    why: str = ""  # for "public": why no credential is asked


PUBLIC_OPS = "liveness, readiness, metrics and the API description are read by probes and scrapers"
INFERENCE = "local serving's Open Inference Protocol, open like KServe's data plane it stands in for"
ENDPOINTS: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): Access("public", why=PUBLIC_OPS),
    ("GET", "/readyz"): Access("public", why=PUBLIC_OPS),
    ("GET", "/status"): Access("public", why=PUBLIC_OPS),
    ("GET", "/metrics"): Access("public", why=PUBLIC_OPS),
    ("GET", "/openapi.json"): Access("public", why=PUBLIC_OPS),
    ("GET", "/docs"): Access("public", why="FastAPI's page over /openapi.json"),
    ("GET", "/docs/oauth2-redirect"): Access("public", why="FastAPI's page over /openapi.json"),
    ("GET", "/redoc"): Access("public", why="FastAPI's page over /openapi.json"),
    ("GET", "/ui"): Access("public", why="static page; it asks for a token and sends it with each API call"),
    ("GET", "/ui/page.js"): Access("public", why="the /ui page's own script; it holds no data"),
    ("GET", "/ui/page.css"): Access("public", why="the /ui page's own style; it holds no data"),
    ("GET", "/v2"): Access("public", why=INFERENCE),
    ("GET", "/v2/health/live"): Access("public", why=INFERENCE),
    ("GET", "/v2/health/ready"): Access("public", why=INFERENCE),
    ("GET", "/v2/models/{model}/versions/{version}"): Access("public", 404, why=INFERENCE),
    ("GET", "/v2/models/{model}/versions/{version}/ready"): Access("public", 404, why=INFERENCE),
    ("GET", "/v2/{path:path}"): Access("public", 404, why=INFERENCE),
    ("POST", "/v2/{path:path}"): Access("public", 404, why=INFERENCE),
    ("GET", "/v2/models/{model}"): Access("public", 404, why=INFERENCE),
    ("GET", "/v2/models/{model}/ready"): Access("public", 404, why=INFERENCE),
    ("POST", "/v2/models/{model}/infer"): Access("public", 404, why=INFERENCE),
    ("POST", "/v2/models/{model}/versions/{version}/infer"): Access("public", 404, why=INFERENCE),
    ("POST", "/hooks/gitlab"): Access("webhook", (200, 202)),
    ("POST", "/hooks/minio"): Access("webhook", (200, 202)),
    ("POST", "/hooks/alertmanager"): Access("webhook", (200, 202)),
    ("POST", "/hooks/mlflow"): Access("webhook", (200, 202)),
    ("GET", "/api/v1/events"): Access("token"),
    ("GET", "/api/v1/events/stream"): Access("token"),
    ("GET", "/api/v1/dead-letters"): Access("token"),
    ("GET", "/api/v1/notices"): Access("token"),
    ("POST", "/api/v1/dead-letters/replay"): Access("group", groups=("admin",)),
    ("GET", "/api/v1/policies"): Access("token"),
    ("GET", "/api/v1/gates"): Access("token"),
    ("GET", "/api/v1/gates/{gate_id}"): Access("token"),
    ("GET", "/api/v1/models"): Access("token"),
    ("GET", "/api/v1/models/{model}"): Access("token"),
    ("GET", "/api/v1/models/{model}/rollouts"): Access("token"),
    ("GET", "/api/v1/models/{model}/rollouts/{rollout_id}/chart"): Access("token", 404),
    ("GET", "/api/v1/models/{model}/chain"): Access("token"),
    ("GET", "/api/v1/audit"): Access("token"),
    ("POST", "/api/v1/gates/{gate_id}/approve"): Access("group", groups=(APPROVERS,)),
    ("POST", "/api/v1/gates/{gate_id}/reject"): Access("group", groups=(APPROVERS,)),
    ("POST", "/api/v1/models/{model}/rollback"): Access("group", 202, groups=("oncall",)),
    ("POST", "/api/v1/models/{model}/retrain"): Access("group", 202, groups=("oncall",)),
    ("POST", "/api/v1/models/{model}/rollout/{action}"): Access("group", (202, 404, 409), groups=("oncall",)),
    ("POST", "/api/v1/explain"): Access("token"),
    ("GET", "/api/v1/models/{model}/versions/{version}/lineage"): Access("token", 404),
}
GUARDED = [(endpoint, access) for endpoint, access in ENDPOINTS.items() if access.kind in ("token", "group")]
PUBLIC = [(endpoint, access) for endpoint, access in ENDPOINTS.items() if access.kind == "public"]


_RUN = secrets.token_urlsafe(12)  # tokens differ from run to run, so a leak cannot come from elsewhere


def token(name: str) -> str:
    return f"mlcd_{name}_" + _RUN


PEOPLE = {"lead": {"identity": "Lena Lead", "gitlab_username": "lena"}}  # lead's token is GitLab user lena


def write_tokens(path: Path) -> Path:
    entries = [
        {
            "name": name,
            "groups": groups,
            "token_sha256": hashlib.sha256(token(name).encode()).hexdigest(),
            **PEOPLE.get(name, {}),
        }
        for name, groups in IDENTITIES.items()
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


def write_policies(folder: Path) -> Path:
    """MODEL, registered straight in MLflow (no code project), and CODED_MODEL, built from ml/coded;
    both approved by ml-leads, whom GitLab user lena acts for in merge-request comments."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "defaults.yaml").write_text((REPO / "policies" / "defaults.yaml").read_text())
    approval = {
        "required": True,
        "groups": [APPROVERS],
        "timeout": "1h",
        "gitlab_users": {APPROVERS: ["lena"]},
    }
    trained = {"model": MODEL, "training": {"pipeline": "wine_quality"}}
    for policy in (trained, {"model": CODED_MODEL, "code": {"project": CODED_PROJECT}}):
        (folder / f"{policy['model']}.yaml").write_text(yaml.safe_dump({**policy, "approval": approval}))
    return folder


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(name)}"}


def presented(credential: Credential, access: Access) -> list[dict[str, str]]:
    """The Authorization headers that present `credential` to an endpoint guarded by `access`."""
    if credential == "none":
        return [{}]
    if credential == "wrong":
        return [
            {"Authorization": f"Bearer mlcd_not_issued_{_RUN}"},
            # the stored hash is not the token, and another scheme is not a bearer token
            {"Authorization": f"Bearer {hashlib.sha256(token('olivia').encode()).hexdigest()}"},
            {"Authorization": f"Basic {token('olivia')}"},
            {"Authorization": token("olivia")},
        ]
    permitted = [
        name
        for name, groups in IDENTITIES.items()
        if not access.groups or access.groups[0] in groups or "admin" in groups
    ]
    refused = [name for name in IDENTITIES if name not in permitted]
    if credential == "right":
        return [bearer(name) for name in permitted]
    return [bearer(name) for name in (refused or permitted)]


# --- the app under test ------------------------------------------------------------------------------


class _NoModelsRegistry:
    """The registry port with no champion, holding every version asked for, taking aliases and tags:
    access is under test, not MLflow."""

    async def get_version(self, model: str, version: str) -> ModelVersion:
        return ModelVersion(model, version, None, f"models:/{model}/{version}")

    async def version_by_alias(self, model: str, alias: str) -> ModelVersion | None:
        return None

    async def flavors(self, version: ModelVersion) -> Flavors:
        return {}

    async def set_alias(self, model: str, alias: str, version: str) -> None:
        return None

    async def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None:
        return None

    async def ping(self) -> None:
        return None


def open_gate(
    database_url: str, model: str, *, author: str = "alice", project: str = "", commit: str = ""
) -> str:
    """A fresh open gate of `model` waiting for one approval, stored directly; returns its id."""
    cause = f"access-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    gate = gates.Gate(
        id=gates.gate_id_for(cause),
        model=model,
        model_version="7",
        champion_version="6",
        state="open",
        rules=[],
        approvals_required=1,
        approver_groups=[APPROVERS],
        author=author,
        project=project,
        commit=commit,
        created_at=now,
        expires_at=now + timedelta(hours=1),
        cause_event_id=cause,
    )

    async def insert() -> str:
        engine = database.create_engine(database_url)
        try:
            async with engine.begin() as conn:
                return (await gates.open_gate(conn, gate)).id
        finally:
            await engine.dispose()

    return asyncio.run(insert())


@dataclass
class Api:
    url: str
    app: FastAPI
    settings: Settings
    keys: WebhookSecrets
    http: httpx.Client
    shared_gate: str = ""

    def open_gate(self, model: str = MODEL, author: str = "alice", project: str = "") -> str:
        """A fresh open gate in the app's own store; returns its id."""
        return open_gate(self.settings.effective_database_url, model, author=author, project=project)

    def request(
        self, method: str, path: str, headers: dict[str, str], gate_id: str | None = None
    ) -> httpx.Response:
        """Call `path` (a route template), its parameters filled with a gate and the policy's model."""
        url = path.replace("{path:path}", "nothing/here").format(
            gate_id=gate_id or self.shared_gate, model=MODEL, version="1", action="pause", rollout_id="1"
        )
        body: dict[str, Any] | None = None
        if method == "POST" and "/v2/" in path:
            body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[1.0]]}]}
        elif path.endswith("/rollback"):
            body = {"reason": "access matrix", "to_version": "1"}
        elif path.endswith("/retrain"):
            body = {"reason": "access matrix", "data_uri": f"s3://landing/{MODEL}/batch.csv"}
        elif path.endswith("/explain"):
            body = events.new_event(events.RetrainRequested(model=MODEL, reason="m"), source="t").structured()
        elif method == "POST":
            body = {"reason": "access matrix"}
        if path.endswith("/stream"):  # an event stream does not end: its status and headers are the answer
            with self.http.stream(method, url, headers=headers) as streamed:
                content = streamed.read() if streamed.status_code >= 400 else b""
                return httpx.Response(streamed.status_code, headers=streamed.headers, content=content)
        return self.http.request(method, url, headers=headers, json=body)

    def post(self, sent: Delivery) -> httpx.Response:
        return self.http.post(sent.path, content=sent.body, headers=sent.headers)

    def gate(self, gate_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/v1/gates/{gate_id}", headers=bearer("olivia"))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def rollbacks(self) -> int:
        """Rollbacks and retrains asked for so far."""
        asked = 0
        for kind in (events.RollbackRequested, events.RetrainRequested):
            params = {"type": kind.type, "model": MODEL, "limit": 1000}
            answer = self.http.get("/api/v1/events", params=params, headers=bearer("olivia"))
            assert answer.status_code == 200, answer.text
            asked += len(answer.json())
        return asked


@contextmanager
def serving(configured: Settings, keys: WebhookSecrets, services: tuple[str, ...] = ()) -> Iterator[Api]:
    """The whole HTTP surface of `mlcd serve ingest` (with /ui and local serving) on the embedded stores,
    with the consumers of `services` beside it on the in-process bus."""
    built: list[FastAPI] = []

    @asynccontextmanager
    async def whole_app() -> AsyncIterator[FastAPI]:
        ports = dataclasses.replace(bootstrap.build_ports(configured), registry=_NoModelsRegistry())
        consumers = [bootstrap.service(name) for name in services]
        system = bootstrap.system(configured, consumers, http=True, ui=True, ports=ports)
        await system.host.start()
        try:
            assert system.app is not None
            built.append(system.app)
            yield built[0]
        finally:
            await system.host.stop()
            await system.close()

    with ingest_app.serving_in_thread(whole_app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Api(url, built[0], configured, keys, http)


def configuration(root: Path, keys: WebhookSecrets, **more: Any) -> Settings:
    return Settings(
        home=root / "home",
        policies_dir=write_policies(root / "policies"),
        pipelines_dir=REPO / "pipelines",
        api_tokens_file=write_tokens(root / "tokens.yaml"),
        **keys.settings(),
        **more,
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    keys = WebhookSecrets.fresh()
    with serving(configuration(tmp_path_factory.mktemp("access"), keys), keys) as served:
        served.shared_gate = served.open_gate()
        yield served


MAINTAINER, DEVELOPER = 40, 30  # GitLab access levels


def merge_request_comment(keys: WebhookSecrets, username: str, project: str, command: str) -> Delivery:
    """A GitLab note hook: `username` commented `command` on merge request !7 of `project`."""
    body = {
        "object_kind": "note",
        "user": {"username": username, "name": username.title()},
        "project": {"id": 1, "path_with_namespace": project},
        "object_attributes": {"note": f"Looked at it.\n{command}\n", "noteable_type": "MergeRequest"},
        "merge_request": {"iid": 7},
    }
    return delivery("gitlab", keys, "right", body=json.dumps(body).encode(), gitlab_event="Note Hook")


def served_endpoints(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, included routers flattened."""
    found = set()
    for route in iter_route_contexts(app.routes):
        methods = set(route.methods or ()) or {"ANY"}  # a mount or websocket: a surface all the same
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette answers HEAD wherever GET is served
        found |= {(method, route.path) for method in methods}
    return found


# --- 1. HTTP: every endpoint by every credential ------------------------------------------------------


def test_every_served_endpoint_has_a_declared_access_rule(api: Api) -> None:
    spec = api.http.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    served = served_endpoints(api.app)

    assert documented <= served
    assert not served - ENDPOINTS.keys(), (
        f"endpoints with no access rule: {sorted(served - ENDPOINTS.keys())}"
    )
    assert not ENDPOINTS.keys() - served, (
        f"rules for endpoints not served: {sorted(ENDPOINTS.keys() - served)}"
    )
    hooks = {path for (_, path), access in ENDPOINTS.items() if access.kind == "webhook"}
    assert hooks == {f"/hooks/{source}" for source in SOURCES}


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize(("endpoint", "access"), GUARDED, ids=[f"{m} {p}" for (m, p), _ in GUARDED])
def test_guarded_endpoint_answers_each_credential(
    api: Api, endpoint: tuple[str, str], access: Access, credential: Credential
) -> None:
    method, path = endpoint
    mutates = method == "POST"
    gate_id = api.open_gate() if mutates else api.shared_gate
    rollbacks_before = api.rollbacks() if mutates else 0
    for headers in presented(credential, access):
        if mutates and "/gates/" in path:  # each permitted caller decides a gate of their own
            gate_id = api.open_gate()
        answer = api.request(method, path, headers, gate_id)
        shown = headers.get("Authorization", "no Authorization header")
        if credential in ("none", "wrong"):
            assert answer.status_code == 401, (shown, answer.text)
            assert answer.headers.get("www-authenticate") == "Bearer"
            assert "token" in answer.text.lower()
        elif credential == "wrong-group" and access.kind == "group":
            assert answer.status_code == 403, (shown, answer.text)
            assert re.search(r"group|on call", answer.text), answer.text
        else:
            allowed = access.allowed if isinstance(access.allowed, tuple) else (access.allowed,)
            assert answer.status_code in allowed, (shown, answer.text)
        for name in IDENTITIES:
            assert token(name) not in answer.text
    if mutates and answer.status_code >= 400:  # refused: the gate is untouched, no rollback was asked
        if "/gates/" in path:
            gate = api.gate(gate_id)
            assert gate["state"] == "open" and gate["approvals"] == []
            assert {entry["outcome"] for entry in gate["audit"]} <= {"refused"}
        else:
            assert api.rollbacks() == rollbacks_before


@pytest.mark.parametrize(("endpoint", "access"), PUBLIC, ids=[f"{m} {p}" for (m, p), _ in PUBLIC])
def test_public_endpoint_answers_the_same_whatever_credential_comes(
    api: Api, endpoint: tuple[str, str], access: Access
) -> None:
    method, path = endpoint
    statuses = {
        credential: {api.request(method, path, h).status_code for h in presented(credential, access)}
        for credential in CREDENTIALS
    }
    assert set().union(*statuses.values()) == {access.allowed}, statuses


@pytest.mark.parametrize(
    ("source", "variant"), [(s, v) for s in SOURCES for v in VARIANTS[s]], ids=lambda value: str(value)
)
def test_webhook_answers_each_secret(api: Api, source: Any, variant: str) -> None:
    answer = api.post(delivery(source, api.keys, variant))
    if variant == "right":
        assert answer.status_code in (200, 202), answer.text
        assert answer.json()["events"]
    else:
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]
    assert not any(value in answer.text for value in api.keys.values())


def test_an_api_token_does_not_open_a_webhook_nor_a_webhook_secret_the_api(api: Api) -> None:
    for source in ("minio", "alertmanager"):
        sent = delivery(source, api.keys, "none")
        answer = api.post(replace(sent, headers={**sent.headers, **bearer("olivia")}))
        assert answer.status_code == 401, answer.text
    for secret in (api.keys.minio, api.keys.alertmanager, api.keys.gitlab):
        answer = api.http.get("/api/v1/gates", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 401, answer.text


BROKEN_TOKEN_FILES = {
    # an operator wrote the token where its hash belongs, or broke the YAML on the token's line
    "raw token field": "- name: olivia\n  groups: [oncall]\n  token: {token}\n",
    "broken YAML": "- name: olivia\n  groups: [oncall]\n  token_sha256: {token} : [\n",
}


@pytest.mark.parametrize("mistake", BROKEN_TOKEN_FILES)
def test_a_broken_tokens_file_keeps_the_api_closed_and_its_content_to_itself(
    tmp_path: Path, mistake: str
) -> None:
    keys = WebhookSecrets.fresh()
    configured = configuration(tmp_path, keys)
    assert configured.api_tokens_file is not None
    configured.api_tokens_file.write_text(BROKEN_TOKEN_FILES[mistake].format(token=token("olivia")))
    with serving(configured, keys) as api:
        api.shared_gate = api.open_gate()
        for (method, path), access in GUARDED:
            for headers in (*presented("right", access), {}):
                answer = api.request(method, path, headers, api.open_gate() if method == "POST" else None)
                assert answer.status_code >= 400, (path, answer.text)
                assert "unreadable" in answer.text or answer.status_code == 401, answer.text
                assert token("olivia") not in answer.text, f"{path} shows the tokens file: {answer.text}"


def test_gate_author_in_the_approver_group_still_may_not_approve_their_own_change(api: Api) -> None:
    gate_id = api.open_gate(author="lead")
    answer = api.http.post(f"/api/v1/gates/{gate_id}/approve", headers=bearer("lead"), json={})
    assert answer.status_code == 403, answer.text
    assert api.gate(gate_id)["state"] == "open"


def test_the_changes_gitlab_author_may_not_approve_it_through_any_surface(api: Api, tmp_path: Path) -> None:
    """The gate's author is a GitLab username; the token file says the lead token is GitLab user lena."""
    gate_id = api.open_gate(author="lena")
    for via in ("api", "ui"):
        headers = {**bearer("lead"), "X-Mlcd-Via": via}
        answer = api.http.post(f"/api/v1/gates/{gate_id}/approve", headers=headers, json={})
        assert answer.status_code == 403 and "lena is the author of the change" in answer.text, answer.text
    env = {"MLCD_API_URL": api.url, "MLCD_API_TOKEN": token("lead"), "MLCD_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli.app, ["gates", "approve", gate_id], env=env)
    assert result.exit_code == 1 and "403: lena is the author of the change" in result.stderr
    gate = api.gate(gate_id)
    assert gate["state"] == "open" and gate["approvals"] == []
    assert [(e["actor"], e["via"], e["outcome"]) for e in gate["audit"]] == [
        ("lena", "api", "refused"),
        ("lena", "ui", "refused"),
        ("lena", "cli", "refused"),
    ]
    # Rejecting one's own change is allowed, and recorded under the one identity.
    rejected = api.http.post(
        f"/api/v1/gates/{gate_id}/reject", headers=bearer("lead"), json={"reason": "oops"}
    )
    assert rejected.status_code == 200 and api.gate(gate_id)["decided_by"] == "lena"


def test_merge_request_comment_decides_only_for_the_models_approvers(tmp_path: Path) -> None:
    keys = WebhookSecrets.fresh()
    with FakeGitLab() as gitlab:
        for project, members in {
            "mallory/sandbox": {"mallory": MAINTAINER},
            CODED_PROJECT: {"maya": MAINTAINER, "devon": DEVELOPER},
        }.items():
            gitlab.add_project(project)
            gitlab.add_merge_request(project, 7)
            for username, level in members.items():
                gitlab.add_member(project, username, level)
        configured = configuration(
            tmp_path, keys, gitlab_url=gitlab.url, gitlab_token=SecretStr(gitlab.token)
        )
        with serving(configured, keys, services=("gatekeeper",)) as api:
            cases = [  # who comments, on a merge request of which project, on whose gate: the outcome
                ("mallory", "mallory/sandbox", MODEL, "refused"),  # a Maintainer, of another project
                ("mallory", "mallory/sandbox", CODED_MODEL, "refused"),
                ("devon", CODED_PROJECT, CODED_MODEL, "refused"),  # a Developer of the model's project
                ("maya", CODED_PROJECT, CODED_MODEL, "accepted"),  # a Maintainer of the model's project
                ("lena", "mallory/sandbox", MODEL, "accepted"),  # acts for ml-leads, says the policy
            ]
            decided = []
            for who, project, model, outcome in cases:
                gate_id = api.open_gate(model, project=CODED_PROJECT if model == CODED_MODEL else "")
                sent = merge_request_comment(keys, who, project, f"/mlcd approve {gate_id}")
                answer = api.post(sent)
                assert answer.status_code == 202, answer.text
                decided.append((gate_id, who, outcome))
            for gate_id, who, outcome in decided:
                handled = lambda gate_id=gate_id: bool(api.gate(gate_id)["audit"])  # noqa: E731
                processes.wait_until(handled, 60, f"{who}'s comment handled")
                gate = api.gate(gate_id)
                seen = [(entry["actor"], entry["via"], entry["outcome"]) for entry in gate["audit"]]
                assert seen == [(who, "gitlab", outcome)], (gate["model"], gate["audit"])
                assert gate["state"] == ("approved" if outcome == "accepted" else "open")


# --- 2. the command line: every command that calls the API, by every credential -------------------------

ROLLOUT_ACTIONS = ("promote", "abort", "pause", "resume", "retry")
API_COMMANDS: dict[tuple[str, ...], Access] = {
    ("gates", "list"): Access("token"),
    ("gates", "show"): Access("token"),
    ("gates", "approve"): Access("group", groups=(APPROVERS,)),
    ("gates", "reject"): Access("group", groups=(APPROVERS,)),
    ("rollback",): Access("group", groups=("oncall",)),
    ("retrain",): Access("group", groups=("oncall",)),
    ("status",): Access("token"),
    ("events", "list"): Access("token"),
    ("events", "tail"): Access("token"),
    ("dlq", "list"): Access("token"),
    ("dlq", "replay"): Access("group", groups=("admin",)),
    ("explain",): Access("token"),
    ("lineage",): Access("token"),
    **{("rollout", action): Access("group", groups=("oncall",)) for action in ROLLOUT_ACTIONS},
}
STORE = "reads or writes the state store directly: MLCD_DATABASE_URL is its credential, not an API token"
OTHER_COMMANDS: dict[tuple[str, ...], str] = {
    ("up",): "runs the services in this process",
    ("demo",): "runs the services in this process",
    ("serve",): "runs a service in this process",
    ("db", "upgrade"): STORE,
    ("db", "current"): STORE,
    ("policy", "check"): "reads a local policy file",
    ("pipelines", "compile"): "compiles local pipeline code",
}


def command_tree() -> dict[tuple[str, ...], Callable[..., Any]]:
    """Every leaf command of `mlcd`, by its words, with the function it runs."""
    root = typer.main.get_command(cli.app)
    found: dict[tuple[str, ...], Callable[..., Any]] = {}

    def walk(command: Any, words: tuple[str, ...], context: Any) -> None:
        if hasattr(command, "list_commands"):
            for name in command.list_commands(context):
                walk(command.get_command(context, name), (*words, name), context)
        else:
            found[words] = command.callback

    walk(root, (), typer.Context(root))
    return found


def test_every_command_is_classified_and_only_the_api_commands_call_the_api() -> None:
    tree = command_tree()
    classified = API_COMMANDS.keys() | OTHER_COMMANDS.keys()
    assert not tree.keys() - classified, f"commands with no access rule: {sorted(tree.keys() - classified)}"
    assert not classified - tree.keys(), f"rules for commands that do not exist: {classified - tree.keys()}"
    for words, callback in tree.items():
        module = inspect.getsource(inspect.getmodule(callback))  # type: ignore[arg-type]
        calls_api = "_api.call(" in module
        assert calls_api == (words in API_COMMANDS), f"mlcd {' '.join(words)}: calls the API: {calls_api}"


def cli_arguments(api: Api, words: tuple[str, ...]) -> list[list[str]]:
    if words in {("gates", "approve"), ("gates", "reject")}:
        return [[*words, api.open_gate(), "--reason", "cli matrix"]]
    if words == ("gates", "show"):
        return [[*words, api.shared_gate]]
    if words == ("rollback",):
        return [[*words, MODEL, "--reason", "cli matrix", "--to-version", "1"]]
    if words == ("retrain",):
        return [[*words, MODEL, "--reason", "cli matrix", "--data", f"s3://landing/{MODEL}/b.csv"]]
    if words == ("events", "tail"):
        return [[*words, "--timeout", "1"]]
    if words == ("explain",):
        asked = api.settings.home / "retrain-event.json"
        retrain = events.new_event(events.RetrainRequested(model=MODEL, reason="m"), source="t")
        asked.write_text(json.dumps(retrain.structured(), default=str))
        return [[*words, str(asked)]]
    if words == ("status",):
        return [[*words], [*words, MODEL]]
    if words[0] == "rollout":
        return [[*words, MODEL]]
    if words == ("lineage",):
        return [[*words, MODEL, "1"]]
    return [list(words)]


def cli_tokens(credential: Credential, access: Access) -> list[str | None]:
    if credential == "none":
        return [None]
    if credential == "wrong":
        return [f"mlcd_not_issued_{_RUN}"]
    return [headers["Authorization"].removeprefix("Bearer ") for headers in presented(credential, access)]


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("words", list(API_COMMANDS), ids=" ".join)
def test_api_command_answers_each_credential_in_one_line(
    api: Api, tmp_path: Path, words: tuple[str, ...], credential: Credential
) -> None:
    access = API_COMMANDS[words]
    for presented_token in cli_tokens(credential, access):  # each token decides a gate of its own
        for arguments in cli_arguments(api, words):
            env = {"MLCD_API_URL": api.url, "MLCD_API_TOKEN": presented_token, "MLCD_HOME": str(tmp_path)}
            result = CliRunner().invoke(cli.app, arguments, env=env)
            said = f"mlcd {' '.join(arguments)} → {result.exit_code}: {result.stdout}{result.stderr}"
            assert result.exception is None or isinstance(result.exception, SystemExit), said
            assert "Traceback" not in result.stdout + result.stderr, said
            assert all(token(name) not in result.stdout + result.stderr for name in IDENTITIES), said
            refused = credential in ("none", "wrong") or (
                credential == "wrong-group" and access.kind == "group"
            )
            if not refused and words == ("events", "tail"):  # nothing happens in that second
                assert result.exit_code == 0 and result.stderr.startswith("following the journal"), said
                continue
            if not refused and words[0] == "rollout":  # allowed, but the model has no rollout to steer
                assert result.exit_code == 1 and result.stderr.startswith("error: 409: "), said
                assert len(result.stderr.strip().splitlines()) == 1, said
                continue
            if not refused and words == ("lineage",):  # allowed, but the journal names no version 1
                assert result.exit_code == 1 and result.stderr.startswith("error: 404: "), said
                assert len(result.stderr.strip().splitlines()) == 1, said
                continue
            if not refused:
                assert result.exit_code == 0 and result.stdout.strip() and not result.stderr, said
                continue
            assert result.exit_code == 1 and not result.stdout, said
            assert len(result.stderr.strip().splitlines()) == 1, said
            expected = {
                "none": "error: no API token: set MLCD_API_TOKEN",
                "wrong": "error: 401: ",
                "wrong-group": "error: 403: ",
            }[credential]
            assert result.stderr.startswith(expected), said


def test_cli_falls_back_to_the_token_mlcd_up_wrote(api: Api, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(token("olivia") + "\n")
    result = CliRunner().invoke(
        cli.app, ["gates", "show", api.shared_gate], env={"MLCD_API_URL": api.url, "MLCD_HOME": str(tmp_path)}
    )
    assert result.exit_code == 0, result.stderr
    assert f"gate {api.shared_gate}" in result.stdout


def test_console_script_refuses_in_one_line_without_a_traceback(api: Api, tmp_path: Path) -> None:
    cases = [
        (["gates", "approve", api.open_gate()], f"mlcd_not_issued_{_RUN}", "error: 401: "),
        (["rollback", MODEL], token("lead"), "error: 403: lead is not on call"),
    ]
    for arguments, presented_token, expected in cases:
        env = {"MLCD_API_URL": api.url, "MLCD_API_TOKEN": presented_token, "MLCD_HOME": str(tmp_path)}
        done = subprocess.run(
            [MLCD, *arguments], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done
        assert done.stdout == "" and done.stderr.count("\n") == 1 and done.stderr.startswith(expected), done
        assert presented_token not in done.stderr


# --- 4. secrets are compared in constant time, and only there ------------------------------------------


class CompareDigestSpy:
    """Stands in for hmac.compare_digest: records what was compared, answers truly or as forced."""

    def __init__(self, real: Callable[[Any, Any], bool], forced: bool | None = None) -> None:
        self.real = real
        self.forced = forced
        self.compared: list[tuple[Any, Any]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        self.compared.append((a, b))
        return self.real(a, b) if self.forced is None else self.forced

    def saw(self, value: str) -> bool:
        return any(value in (a, b) or value.encode() in (a, b) for a, b in self.compared)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool | None], CompareDigestSpy]:
    """Installs a fresh spy in place of hmac.compare_digest (process-wide: the served app sees it too)."""
    real = hmac.compare_digest

    def install(forced: bool | None = None) -> CompareDigestSpy:
        installed = CompareDigestSpy(real, forced)
        monkeypatch.setattr(hmac, "compare_digest", installed)
        return installed

    return install


@pytest.mark.parametrize(("endpoint", "access"), GUARDED, ids=[f"{m} {p}" for (m, p), _ in GUARDED])
def test_api_token_is_identified_by_compare_digest_alone(
    api: Api, spy: Callable[[bool | None], CompareDigestSpy], endpoint: tuple[str, str], access: Access
) -> None:
    method, path = endpoint
    right = presented("right", access)[0]

    def status(headers: dict[str, str]) -> int:
        return api.request(method, path, headers, api.open_gate() if method == "POST" else None).status_code

    watched = spy(None)
    allowed = access.allowed if isinstance(access.allowed, tuple) else (access.allowed,)
    assert status(right) < 400 or status(right) in allowed
    digest = hashlib.sha256(right["Authorization"].removeprefix("Bearer ").encode()).hexdigest()
    assert watched.saw(digest), "the presented token's hash never reached hmac.compare_digest"
    assert len(watched.compared) >= len(IDENTITIES), "not every known token was compared"
    spy(False)
    assert status(right) == 401
    spy(True)
    assert status(presented("wrong", access)[0]) != 401


@pytest.mark.parametrize("source", SOURCES)
def test_webhook_secret_is_checked_by_compare_digest_alone(
    api: Api, spy: Callable[[bool | None], CompareDigestSpy], source: Any
) -> None:
    def status(sent: Delivery) -> int:
        return api.post(sent).status_code

    watched = spy(None)
    sent = delivery(source, api.keys, "right")
    assert status(sent) in (200, 202)
    headers = {name.lower(): value for name, value in sent.headers.items()}
    checked = {
        "gitlab": [api.keys.gitlab, headers.get("webhook-signature", "").removeprefix("v1,")],
        "minio": [api.keys.minio],
        "alertmanager": [api.keys.alertmanager],
        "mlflow": [headers.get("x-mlflow-signature", "").removeprefix("v1,")],
    }[source]
    for value in checked:
        assert value and watched.saw(value), f"a {source} credential never reached hmac.compare_digest"

    spy(False)
    assert status(delivery(source, api.keys, "right")) == 401
    spy(True)
    for variant in VARIANTS[source]:
        if variant not in ("none", "right"):
            accepted = status(delivery(source, api.keys, variant))
            assert accepted in (200, 202), f"{variant}: something besides compare_digest refused it"


def test_a_source_without_a_secret_stays_closed_to_an_empty_credential() -> None:
    unset = ("gitlab_webhook_secret", "gitlab_signing_token", "minio_webhook_token", "alertmanager_token")
    closed = Settings.model_validate(dict.fromkeys((*unset, "mlflow_webhook_secret")))
    empty = {
        "x-gitlab-token": "",
        "authorization": "Bearer ",
        "x-mlflow-delivery-id": "d",
        "x-mlflow-timestamp": "0",
        "x-mlflow-signature": "v1,",
    }
    for source in SOURCES:
        with pytest.raises(Unauthorized, match="closed"):
            authenticate(source, closed, empty, b"{}", 0.0)


SECRET_NAMES = re.compile(
    r"secret|token|signature|digest|password|sha256|signing|credential|authori|expected|presented", re.I
)
# Comparisons whose operands have secret-looking names but compare no secret, each with the reason.
NOT_A_SECRET = {
    'authorization[:7].lower() == "bearer "': "the scheme of the Authorization header, not its token",
    "k not in _SECRET_HEADERS": "header names, to leave the secret ones out of dead letters",
    "author.lower() in {name.lower() for name in names}": "GitLab usernames of who may decide",
    'signature.layout == "columns"': "an MLflow model signature's layout, not a webhook signature",
    'signature.layout == "tensors"': "an MLflow model signature's layout, not a webhook signature",
    'signature.names == ("",)': "an MLflow model signature's input names",
    "n not in signature.names": "an MLflow model signature's input names",
}
EQUALITY = ast.Eq | ast.NotEq | ast.In | ast.NotIn


def _equality_comparisons(module: Path) -> Iterator[tuple[ast.Compare, str]]:
    source = module.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, EQUALITY) for op in node.ops):
            yield node, ast.get_source_segment(source, node) or ""


def test_no_secret_is_compared_with_an_equality_operator() -> None:
    """Anywhere in services/, no ==/in on a secret-named value; in the modules that check secrets with
    hmac.compare_digest, no ==/in between two values at all (only against a literal, like a scheme)."""
    found = []
    package = Path(mlcd.__file__).parent
    for module in sorted(package.rglob("*.py")):
        checks_secrets = "compare_digest" in module.read_text()
        for node, text in _equality_comparisons(module):
            names = [
                n.id if isinstance(n, ast.Name) else n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Name | ast.Attribute)
            ]
            secret_named = any(SECRET_NAMES.search(name) for name in names) and text not in NOT_A_SECRET
            operands = [node.left, *node.comparators]
            between_values = not any(isinstance(operand, ast.Constant) for operand in operands)
            if text not in NOT_A_SECRET and (secret_named or (checks_secrets and between_values)):
                found.append(f"{module.relative_to(package.parent)}:{node.lineno}: {text}")
    assert not found, "secrets compared with ==/in rather than hmac.compare_digest:\n" + "\n".join(found)


# --- 3. no secret reaches a log line, an answer, an event or a dead letter -----------------------------

WINE = "wine_quality"  # the repository's reference policy: project ml/wine-quality, approvers "oncall"
COMMIT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"


def test_secret_scan_finds_each_encoding_of_a_secret() -> None:
    secret = "s3cr3t/with+odd=chars"
    for encoding, form in secret_scan.encodings(secret).items():
        found = secret_scan.leaks({"probe": secret}, {"log": f'{{"msg": "x {form} y"}}'})
        assert [leak.encoding for leak in found if leak.encoding == encoding], encoding
        assert secret not in str(found[0])
    assert not secret_scan.leaks({"probe": secret}, {"log": "s3cr3t with odd chars ***"})


def test_every_configured_credential_is_known_to_the_log_redactor() -> None:
    secret_fields = [
        name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
    ]
    assert {"gitlab_token", "s3_secret_key", "mlflow_webhook_secret", "api_token"} <= set(secret_fields)
    values = {name: f"{name}-{secrets.token_hex(6)}" for name in secret_fields}
    values["slack_webhook_url"] = f"https://hooks.example/{secrets.token_hex(6)}"  # checked to be a URL
    sasl = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "u",
    }
    password = f"pg/{secrets.token_hex(6)}+@"
    configured = Settings.model_validate(
        {
            **values,
            **sasl,  # a SASL password is refused without its protocol, mechanism and user
            "database_url": f"postgresql+asyncpg://mlcd:{quote(password, safe='')}@db:5432/mlcd",
        }
    )
    known = set(configured.secret_values())
    assert set(values.values()) <= known, f"not redacted: {sorted(set(values) - known)}"
    assert {password, quote(password, safe="")} <= known, "the database password is not redacted"


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[str]], io.StringIO]]:
    """Configure mlcd's logging into a buffer, as `mlcd serve` does; the test's own logging comes back."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    def configure(known: list[str]) -> io.StringIO:
        buffer = io.StringIO()
        logs.configure("DEBUG", known, stream=buffer)
        return buffer

    yield configure
    structlog.reset_defaults()


def test_log_redaction_reaches_tracebacks_nested_values_and_library_records(
    json_logs: Callable[[list[str]], io.StringIO],
) -> None:
    password = f"pg/{secrets.token_hex(6)}+@"
    configured = Settings(
        gitlab_token=SecretStr(f"glpat-{secrets.token_hex(8)}"),
        database_url=f"postgresql+asyncpg://mlcd:{quote(password, safe='')}@db:5432/mlcd",
    )
    assert configured.gitlab_token is not None
    gitlab_token = configured.gitlab_token.get_secret_value()
    buffer = json_logs(configured.secret_values())
    log = logs.get("access-test")
    try:
        raise RuntimeError(f"GitLab refused {gitlab_token} for {configured.database_url}")
    except RuntimeError:
        log.exception("consumer failed; rejoining")
        logging.getLogger("some.library").exception("request failed")
    log.warning("call failed", detail={"url": configured.database_url}, attempts=[gitlab_token])

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "consumer failed; rejoining",
        "request failed",
        "call failed",
    ]
    assert "RuntimeError" in lines[0]["exception"] and "RuntimeError" in lines[1]["exception"]
    found = secret_scan.leaks(
        {"GitLab token": gitlab_token, "database password": password}, {"log": buffer.getvalue()}
    )
    assert not found, "\n".join(map(str, found))


def dump_store(url: str) -> str:
    """Every row of every mlcd table (events journal, outbox, dead letters, gates, audit), as text."""

    async def dump() -> str:
        engine = database.create_engine(url)
        lines = []
        try:
            async with engine.connect() as conn:
                every = MetaData()
                await conn.run_sync(every.reflect)
                for table in every.sorted_tables:
                    for row in await conn.execute(select(table)):
                        cells = [
                            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row
                        ]
                        lines.append(f"{table.name}: {' | '.join(cells)}")
        finally:
            await engine.dispose()
        return "\n".join(lines)

    return asyncio.run(dump())


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_no_secret_reaches_logs_answers_events_or_dead_letters(
    tmp_path: Path, kafka_bootstrap: str, pg_url: str
) -> None:
    keys = WebhookSecrets.fresh()
    gitlab_token = f"glpat-{secrets.token_urlsafe(15)}"
    db_password = f"pg/{secrets.token_urlsafe(12)}+@"
    database_url = make_url(pg_url).set(password=db_password).render_as_string(hide_password=False)
    wrong_api_token = f"mlcd_never_issued_{secrets.token_urlsafe(12)}"
    mlflow_password = f"mlflow-{secrets.token_urlsafe(12)}"
    secret_values = {
        **{f"API token of {name}": token(name) for name in IDENTITIES},
        "a wrong API token presented": wrong_api_token,
        "GitLab webhook secret": keys.gitlab,
        "GitLab signing token": keys.gitlab_signing,
        "MinIO webhook token": keys.minio,
        "Alertmanager token": keys.alertmanager,
        "MLflow webhook secret": keys.mlflow,
        "GitLab API token": gitlab_token,
        "S3 access key": minio_gateway.ACCESS_KEY,
        "S3 secret key": minio_gateway.SECRET_KEY,
        "database password": db_password,
        "password in the MLflow URI": mlflow_password,
    }
    places: dict[str, str] = {}
    answers: list[httpx.Response] = []

    gitlab = FakeGitLab(token=gitlab_token).start()
    gitlab.add_project("ml/wine-quality")
    gateway = minio_gateway.start_gateway(tmp_path)
    environment = {
        "MLCD_HOME": str(tmp_path / "home"),
        "MLCD_LOG_LEVEL": "DEBUG",
        "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MLCD_KAFKA_NAMESPACE": f"{unique('access')}.",
        "MLCD_DATABASE_URL": database_url,
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        # down, so a failing part whose URL carries credentials
        "MLCD_MLFLOW_TRACKING_URI": f"http://ci:{mlflow_password}@127.0.0.1:{processes.free_port()}",
        "MLCD_S3_ENDPOINT": gateway.endpoint,
        "MLCD_S3_ACCESS_KEY": gateway.access_key,
        "MLCD_S3_SECRET_KEY": gateway.secret_key,
        "MLCD_S3_TIMEOUT_S": "5",
        "MLCD_GITLAB_URL": gitlab.url,
        "MLCD_GITLAB_TOKEN": gitlab_token,
        "MLCD_API_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.yaml")),
        **keys.environment(),
    }
    ingest = ServiceProcess("ingest", environment, tmp_path)

    def send(method: str, path: str, **options: Any) -> httpx.Response:
        answer = httpx.request(method, ingest.base_url + path, timeout=60, **options)
        answers.append(answer)
        return answer

    def adapter_problem(name: str) -> str | None:
        problem: str | None = send("GET", "/status").json()["adapters"][name]
        return problem

    def mlcd(
        *arguments: str, api_token: str | None = None, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **environment, "MLCD_API_URL": ingest.base_url, **overrides}
        env.pop("MLCD_API_TOKEN", None)
        if api_token is not None:
            env["MLCD_API_TOKEN"] = api_token
        done = subprocess.run([MLCD, *arguments], env=env, capture_output=True, text=True, timeout=120)
        places[f"mlcd {' '.join(arguments)}"] = done.stdout + done.stderr
        return done

    try:
        ingest.start()
        assert send("GET", "/readyz").status_code == 200, "ingest is ready: the store takes deliveries"
        ready = send("GET", "/status").json()["adapters"]
        assert [name for name, problem in ready.items() if problem] == ["registry"], ready

        # every webhook secret: missing, wrong, right, and right with a body mlcd cannot parse (parked)
        for source in SOURCES:
            for variant in VARIANTS[source]:
                sent = delivery(source, keys, variant)
                answer = send("POST", sent.path, content=sent.body, headers=sent.headers)
                assert answer.status_code == (202 if variant == "right" else 401), answer.text
            sent = delivery(source, keys, "right", body=b'{"cut off": ')
            answer = send("POST", sent.path, content=sent.body, headers=sent.headers)
            assert answer.status_code == 202 and answer.json()["status"] == "parked", answer.text

        # API tokens: refused, wrong group, right; the decision is noted on GitLab with its token
        noted, unnoted = (
            open_gate(database_url, WINE, project="ml/wine-quality", commit=COMMIT) for _ in range(2)
        )
        for headers in ({}, {"Authorization": f"Bearer {wrong_api_token}"}, bearer("dev")):
            refused = send("POST", f"/api/v1/gates/{noted}/approve", headers=headers, json={})
            assert refused.status_code in (401, 403), refused.text
        # A rejection: an approval would re-read the champion from the registry, which is down here.
        approved = mlcd("gates", "reject", noted, "--reason", "not yet", api_token=token("olivia"))
        assert approved.returncode == 0, approved.stderr
        assert gitlab.calls_to("POST", f"/repository/commits/{COMMIT}/comments")
        gitlab.fail_next(1, 401)  # GitLab refuses the token: the note fails, the decision stands
        answer = send(
            "POST", f"/api/v1/gates/{unnoted}/reject", headers=bearer("olivia"), json={"reason": "no"}
        )
        assert answer.status_code == 200, answer.text
        assert mlcd("gates", "show", unnoted, api_token=wrong_api_token).returncode == 1
        for headers in ({"Authorization": f"Bearer {wrong_api_token}"}, bearer("dev"), bearer("olivia")):
            send("POST", f"/api/v1/models/{WINE}/rollback", headers=headers, json={"reason": "drill"})
        # on-call may: accepted, or refused at once when nothing earlier is known to roll back to
        assert [a.status_code for a in answers[-3:-1]] == [401, 403] and answers[-1].status_code in (202, 409)
        assert mlcd("rollback", WINE, api_token=bearer("lead")["Authorization"][7:]).returncode == 1

        # failure paths of the GitLab token and the S3 keys, as /status reports them
        # (/status answers with pings younger than a second, so each is waited for)
        gitlab.fail_next(1, 401)
        processes.wait_until(lambda: "401" in (adapter_problem("code_host") or ""), 15, "GitLab's 401")
        gateway.stop()
        processes.wait_until(lambda: bool(adapter_problem("objects")), 15, "the object store down")

        # the journal and the dead letters, through the API and the store commands
        journal = send("GET", "/api/v1/events", params={"limit": 1000}, headers=bearer("olivia")).json()
        assert mlcd("events", "list", "--json", "--limit", "1000", api_token=token("olivia")).returncode == 0
        assert mlcd("dlq", "list", "--all", "--json", api_token=token("olivia")).returncode == 0
        down = (
            f"postgresql+asyncpg://postgres:{quote(db_password, safe='')}@127.0.0.1:{processes.free_port()}/x"
        )
        unreachable = mlcd("db", "current", MLCD_DATABASE_URL=down)  # the one command that opens the store
        assert unreachable.returncode == 1 and "postgres:***@" in unreachable.stderr, unreachable.stderr
    finally:
        stopped = ingest.stop()
        gateway.stop()
        gitlab.stop()
    assert stopped == 0
    log = ingest.log()
    places |= {
        "ingest log": log,
        "HTTP answers": "\n".join(f"{a.status_code} {dict(a.headers)} {a.text}" for a in answers),
        "state store": dump_store(database_url),
        "notes sent to GitLab": "\n".join(json.dumps(call.body) for call in gitlab.calls),
    }

    # The secret-bearing traffic really passed through what is searched: a leak would have been there.
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    said = {(r.get("event"), r.get("webhook_source")) for r in records}
    for source in SOURCES:
        for what in (
            "delivery refused: not authenticated",
            "delivery accepted",
            "delivery parked: unparseable",
        ):
            assert (what, source) in said, f"no '{what}' logged for {source}"
    logged = {r.get("event") for r in records}
    assert {"gate decided", "could not note the decision on the commit"} <= logged
    types = {event["type"] for event in journal}
    assert events.PromotionRejected.type in types
    assert places["state store"].count("dead_letters: ") == len(SOURCES)
    assert "x-gitlab-event" in places["state store"]  # dead letters keep the delivery's headers

    found = secret_scan.leaks(secret_values, places)
    assert not found, "secrets leaked:\n" + "\n".join(map(str, found))
