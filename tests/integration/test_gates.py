"""Promotion gates end to end: the gatekeeper service on the real runtime, the real MLflow server, the gates
API served by uvicorn, the CLI against it, GitLab notes through `/hooks/gitlab` with the fake GitLab
answering the membership check, expiry, and monitoring alerts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mlcd import auth, events
from mlcd import http as mlcd_http
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.notify import LogNotifier
from mlcd.bus.memory import MemoryBus
from mlcd.bus.service import Timer
from mlcd.commands.gates import app as gates_cli
from mlcd.config import Settings
from mlcd.gatekeeper import handlers
from mlcd.gatekeeper.app import router
from mlcd.ingest.app import router as ingest_router
from mlcd.local.serving import LocalServing
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import gates, outbox
from mlcd.store.tables import inbox
from tests.fakes.gitlab_api import FakeGitLab
from tests.support.flows import eventually
from tests.support.ingest_app import serving

REPO = Path(__file__).resolve().parents[2]
PROJECT = "ml/churn"
COMMIT = "9f1c2d3e4b5a69788796a5b4c3d2e1f001122334"
GITLAB_SECRET = "gitlab-hook-secret"
TOKENS = {"olivia": ["oncall"], "oscar": ["oncall"], "alice": ["oncall"], "dev": ["developers"]}
DEADLINE_S = 30.0


def token(name: str) -> str:
    return f"token-{name}"


def identify(presented: str | None) -> auth.Identity | None:
    book = auth.TokenBook(
        [
            auth.TokenEntry(
                name=name, groups=groups, token_sha256=hashlib.sha256(token(name).encode()).hexdigest()
            )
            for name, groups in TOKENS.items()
        ]
    )
    return book.identify(presented)


def write_policy(folder: Path, model: str, **overrides: Any) -> None:
    policy: dict[str, Any] = {
        "model": model,
        "code": {"project": PROJECT, "branch": "main"},
        "promotion": {
            "rules": [
                {"name": "accuracy_floor", "expr": "candidate.metrics.accuracy >= 0.80"},
                {
                    "name": "no_regression",
                    "expr": "candidate.metrics.accuracy >= champion.metrics.accuracy - 0.005",
                },
            ],
            "first_model_rules": [{"name": "accuracy_floor", "expr": "candidate.metrics.accuracy >= 0.80"}],
        },
        "approval": {
            "required": True,
            "groups": ["oncall"],
            "timeout": "1h",
            "gitlab_users": {"oncall": ["olga"]},
        },
        "monitoring": {"debounce": "10m", "actions": {"critical": "rollback", "warning": "retrain"}},
    }
    for key, value in overrides.items():
        policy[key] = {**policy.get(key, {}), **value} if isinstance(value, dict) else value
    (folder / f"{model}.yaml").write_text(yaml.safe_dump(policy))


def register(uri: str, model: str, accuracy: float) -> str:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("gates-test") or client.get_experiment(
        client.create_experiment("gates-test")
    )
    run = client.create_run(experiment.experiment_id)
    client.log_metric(run.info.run_id, "accuracy", accuracy)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model)
    except mlflow.exceptions.MlflowException:
        pass
    return str(client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id).version)


def crown(uri: str, model: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(model, "champion", version)


def trained(model: str, version: str, author: str = "alice") -> events.Envelope[Any]:
    data = events.TrainingSucceeded(
        model=model,
        run_id=f"run-{version}",
        model_version=version,
        metrics={},
        data_uri="s3://landing/churn/batch-1.csv",
        commit=COMMIT,
        author=author,
    )
    return events.new_event(data, source="mlcd/test")


@dataclasses.dataclass
class Stack:
    engine: AsyncEngine
    host: ServiceHost
    url: str
    http: httpx.AsyncClient
    mlflow_uri: str
    model: str
    folder: Path
    gitlab: FakeGitLab

    async def publish(self, *envelopes: events.Envelope[Any]) -> None:
        await self.host.bus.publish([events.encode(e) for e in envelopes])

    async def journal(self, event_type: type[events.Payload]) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await outbox.journal(conn, model=self.model, event_type=event_type.type, limit=100)
        return [event for _, event in rows]

    async def published(self, event_type: type[events.Payload]) -> list[dict[str, Any]]:
        """The journaled events of a type, once the relay has published at least one."""
        found: list[dict[str, Any]] = await eventually(lambda: self.journal(event_type), event_type.type)
        return found

    async def open_gate(self, version: str, author: str = "alice") -> dict[str, Any]:
        await self.publish(trained(self.model, version, author))
        return await self.gate_for(version)

    async def gate_for(self, version: str) -> dict[str, Any]:
        """The open gate of `version`, once the gatekeeper opened it."""

        async def opened() -> list[dict[str, Any]]:
            answer = await self.http.get(
                "/api/v1/gates", params={"model": self.model, "state": "open"}, headers=_bearer("dev")
            )
            return [g for g in answer.json() if g["model_version"] == version]

        return dict((await eventually(opened, f"a gate for version {version}"))[0])

    async def decide(self, gate_id: str, decision: str, who: str, reason: str = "") -> httpx.Response:
        return await self.http.post(
            f"/api/v1/gates/{gate_id}/{decision}",
            json={"reason": reason},
            headers={"Authorization": f"Bearer {token(who)}"},
        )

    async def audit(self, gate_id: str) -> list[gates.AuditEntry]:
        async with self.engine.connect() as conn:
            return await gates.audit_log(conn, gate_id)

    async def version_tags(self, version: str) -> dict[str, str]:
        return dict((await MlflowRegistry(self.mlflow_uri).get_version(self.model, version)).tags)

    async def decided_tags(self, version: str) -> dict[str, str]:
        """The version's tags once the decision is written (`mlcd.decision` is written last)."""

        async def decided() -> dict[str, str] | None:
            tags = await self.version_tags(version)
            return tags if "mlcd.decision" in tags else None

        return dict(await eventually(decided, f"the decision tags on version {version}"))

    async def challenger(self) -> str | None:
        found = await MlflowRegistry(self.mlflow_uri).version_by_alias(self.model, "challenger")
        return found.version if found else None


@pytest.fixture
async def stack(engine: AsyncEngine, mlflow_uri: str, tmp_path: Path) -> AsyncIterator[Stack]:
    model = f"churn_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "policies"
    folder.mkdir()
    write_policy(folder, model)
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)
        gitlab.add_merge_request(PROJECT, 7, sha=COMMIT)
        gitlab.add_member(PROJECT, "mia", 40)
        gitlab.add_member(PROJECT, "dan", 30)
        settings = Settings(
            home=tmp_path / "home",
            policies_dir=folder,
            gitlab_webhook_secret=SecretStr(GITLAB_SECRET),
            handler_backoff_initial_s=0.05,
        )
        policies = PolicyBook(folder)
        code_host = GitLabCodeHost(gitlab.url, gitlab.token, timeout_s=10)
        ports = {
            "policies": policies,
            "registry": MlflowRegistry(mlflow_uri),
            "serving": LocalServing(tmp_path / "home", mlflow_uri),
            "code_host": code_host,
            "notifier": LogNotifier(),
        }
        service = dataclasses.replace(
            handlers.SERVICE, timers=[Timer("expire-gates", 0.2, handlers.expire_gates)]
        )
        bus = MemoryBus(events.TOPICS)
        host = ServiceHost(settings, [service], ports, bus=bus, engine=engine)
        await host.start()
        app = mlcd_http.create_app(
            [
                router(
                    engine,
                    host.waker,
                    policies,
                    identify,
                    code_host=code_host,
                    registry=MlflowRegistry(mlflow_uri),
                ),
                ingest_router(settings=settings, policies=policies, bus=bus, engine=engine),
            ],
            host.readiness,
        )
        try:
            async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield Stack(engine, host, url, http, mlflow_uri, model, folder, gitlab)
        finally:
            await host.stop()


async def test_gate_lifecycle_through_the_api(stack: Stack) -> None:
    champion = register(stack.mlflow_uri, stack.model, 0.84)
    crown(stack.mlflow_uri, stack.model, champion)
    candidate = register(stack.mlflow_uri, stack.model, 0.86)

    gate = await stack.open_gate(candidate)

    shown = (await stack.http.get(f"/api/v1/gates/{gate['id']}", headers=_bearer("dev"))).json()
    assert shown["champion_version"] == champion
    assert {r["name"]: (r["passed"], r["values"]) for r in shown["rules"]} == {
        "accuracy_floor": (True, {"candidate.metrics.accuracy": 0.86}),
        "no_regression": (True, {"candidate.metrics.accuracy": 0.86, "champion.metrics.accuracy": 0.84}),
    }
    assert (await stack.http.get("/api/v1/gates")).status_code == 401

    wrong_group = await stack.decide(gate["id"], "approve", "dev")
    own_change = await stack.decide(gate["id"], "approve", "alice")
    approved = await stack.decide(gate["id"], "approve", "olivia", "metrics look right")
    repeated = await stack.decide(gate["id"], "approve", "olivia")
    late = await stack.decide(gate["id"], "reject", "oscar", "too late")
    unknown = await stack.decide("zzzzzz", "approve", "olivia")

    assert (
        wrong_group.status_code == 403
        and "dev is in none of the approver groups" in wrong_group.json()["error"]
    )
    assert own_change.status_code == 403 and "author" in own_change.json()["error"]
    assert approved.status_code == 200 and approved.json()["gate"]["state"] == "approved"
    assert repeated.status_code == 200 and repeated.json()["status"] == "repeated"
    assert late.status_code == 409 and late.json() == {
        "error": "gate is already approved by olivia",
        "state": "approved",
    }
    assert unknown.status_code == 404
    audit = [(e.actor, e.via, e.action, e.outcome) for e in await stack.audit(gate["id"])]
    assert audit == [
        ("mlcd", "policy", "open", "accepted"),
        ("dev", "api", "approve", "refused"),
        ("alice", "api", "approve", "refused"),
        ("olivia", "api", "approve", "accepted"),
        ("olivia", "api", "approve", "accepted"),
        ("oscar", "api", "reject", "refused"),
    ]
    assert [(e.actor, e.outcome) for e in await stack.audit("zzzzzz")] == [("olivia", "refused")]

    tags = await stack.decided_tags(candidate)
    assert tags["mlcd.decision"] == "approved" and tags["mlcd.approved_by"] == "olivia"
    assert await stack.challenger() == candidate
    (approval,) = await stack.published(events.PromotionApproved)
    assert approval["data"]["gate_id"] == gate["id"] and approval["data"]["approved_by"] == ["olivia"]
    (opened,) = await stack.published(events.GateOpened)
    assert opened["data"]["gate_id"] == gate["id"]

    (notice,) = stack.gitlab.commit_comments(PROJECT, COMMIT)[:1]
    assert f"mlcd gates approve {gate['id']}" in notice["note"]
    assert "| `no_regression` | pass |" in notice["note"]


async def test_failing_rules_reject_and_tag_the_version_without_a_gate(stack: Stack) -> None:
    champion = register(stack.mlflow_uri, stack.model, 0.90)
    crown(stack.mlflow_uri, stack.model, champion)
    candidate = register(stack.mlflow_uri, stack.model, 0.88)

    await stack.publish(trained(stack.model, candidate))

    tags = await stack.decided_tags(candidate)
    assert tags["mlcd.decision"] == "rejected"
    assert tags["mlcd.reason"] == "rules failed: no_regression"
    assert tags["mlcd.rule.no_regression"].startswith("fail: ")
    (rejection,) = await stack.published(events.PromotionRejected)
    outcome = {r["name"]: r for r in rejection["data"]["rules"]}["no_regression"]
    assert outcome["values"] == {"candidate.metrics.accuracy": 0.88, "champion.metrics.accuracy": 0.9}
    assert (await stack.http.get("/api/v1/gates", headers=_bearer("dev"))).json() == []


async def test_first_model_without_approval_goes_straight_to_challenger(stack: Stack) -> None:
    write_policy(stack.folder, stack.model, approval={"required": False})
    candidate = register(stack.mlflow_uri, stack.model, 0.81)

    await stack.publish(trained(stack.model, candidate))

    assert (await stack.decided_tags(candidate))["mlcd.decision"] == "approved"
    assert await stack.challenger() == candidate
    (approval,) = await stack.published(events.PromotionApproved)
    assert approval["data"]["gate_id"] is None
    assert [r["name"] for r in approval["data"]["rules"]] == ["accuracy_floor"]


async def test_gate_lifecycle_through_the_cli(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = register(stack.mlflow_uri, stack.model, 0.83)
    gate = await stack.open_gate(candidate)
    runner = CliRunner()

    async def cli(who: str, *argv: str) -> Any:
        env = {"MLCD_API_URL": stack.url, "MLCD_API_TOKEN": token(who)}
        return await asyncio.to_thread(runner.invoke, gates_cli, list(argv), env=env)

    listed = await cli("dev", "list", "--state", "open", "--model", stack.model)
    shown = await cli("dev", "show", gate["id"])
    forbidden = await cli("dev", "approve", gate["id"])
    no_reason = await cli("oscar", "reject", gate["id"])
    blank_reason = await cli("oscar", "reject", gate["id"], "--reason", "  ")
    api_no_reason = await stack.decide(gate["id"], "reject", "oscar", " ")
    api_no_body = await stack.http.post(
        f"/api/v1/gates/{gate['id']}/reject", headers={"Authorization": f"Bearer {token('oscar')}"}
    )
    rejected = await cli("oscar", "reject", gate["id"], "--reason", "holdout set is stale")
    conflict = await cli("olivia", "approve", gate["id"])
    bad_token = await cli("nobody", "list")

    assert listed.exit_code == 0 and f"{gate['id']}  open" in listed.output
    assert shown.exit_code == 0 and "pass  accuracy_floor" in shown.output
    assert f"caused by alice (may not approve it); merge request {stack.gitlab.url}/{PROJECT}" in shown.output
    assert forbidden.exit_code == 1 and "403" in forbidden.output
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    assert blank_reason.exit_code == 2 and "a rejection needs a reason" in blank_reason.output
    assert api_no_reason.status_code == 422 and "a rejection needs a reason" in api_no_reason.text
    assert api_no_body.status_code == 422 and "reason" in api_no_body.json()["error"]
    assert rejected.exit_code == 0 and f"gate {gate['id']} is rejected" in rejected.output
    assert conflict.exit_code == 1
    assert "409: gate is already rejected by oscar (gate is rejected)" in conflict.output
    assert bad_token.exit_code == 1 and "401: unknown API token" in bad_token.output
    audit = [(e.actor, e.via, e.outcome) for e in await stack.audit(gate["id"])][1:]
    assert audit == [("dev", "cli", "refused"), ("oscar", "cli", "accepted"), ("olivia", "cli", "refused")]

    tags = await stack.decided_tags(candidate)
    assert tags["mlcd.decision"] == "rejected"
    assert tags["mlcd.reason"] == "holdout set is stale" and tags["mlcd.rejected_by"] == "oscar"


async def test_gate_decided_by_a_merge_request_comment(stack: Stack) -> None:
    candidate = register(stack.mlflow_uri, stack.model, 0.85)
    gate = await stack.open_gate(candidate)

    developer = await _comment(stack, "dan", f"/mlcd approve {gate['id']}", "note-1")
    maintainer = await _comment(stack, "mia", f"Looks good.\n/mlcd approve {gate['id']}", "note-2")
    assert developer.status_code == maintainer.status_code == 202

    async def approved() -> bool:
        answer = await stack.http.get(f"/api/v1/gates/{gate['id']}", headers=_bearer("dev"))
        return bool(answer.json()["state"] == "approved")

    await eventually(approved, "the gate approved through GitLab")
    audit = [(e.actor, e.via, e.outcome, e.reason) for e in await stack.audit(gate["id"])][1:]
    assert audit[0][:3] == ("dan", "gitlab", "refused")
    assert "not in" in audit[0][3] or "none of the approver groups" in audit[0][3]
    assert audit[1][:3] == ("mia", "gitlab", "accepted")
    assert any("/members/all/" in call.path for call in stack.gitlab.calls)

    async def replies() -> list[str]:
        notes = [n["body"] for n in stack.gitlab.notes(PROJECT, 7)]
        return notes if len(notes) == 3 else []

    announced, *notes = await eventually(replies, "the gate's announcement and two replies")
    assert f"promotion gate {gate['id']}" in announced  # the merge request of the gate's commit
    assert any("by @dan refused" in n for n in notes) and any("by @mia accepted" in n for n in notes)
    (approval,) = await stack.published(events.PromotionApproved)
    assert approval["data"]["approved_by"] == ["mia"]


async def test_gate_links_the_merge_request_of_its_commit_and_is_announced_there_once(stack: Stack) -> None:
    gate = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.85))
    other = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.86))

    merge_request = f"{stack.gitlab.url}/{PROJECT}/-/merge_requests/7"
    assert gate["merge_request_url"] == other["merge_request_url"] == merge_request

    async def announced() -> list[str]:
        # the notes are posted right after the gate's transaction commits, so a gate the API lists may
        # not be announced yet
        found = [n["body"] for n in stack.gitlab.notes(PROJECT, 7)]
        return (
            found if all(any(f"promotion gate {g['id']}:" in b for b in found) for g in (gate, other)) else []
        )

    bodies = await eventually(announced, "both gates announced on the merge request")
    assert [sum(f"promotion gate {g['id']}:" in b for b in bodies) for g in (gate, other)] == [1, 1]
    assert (
        f"comment `/mlcd approve {other['id']}`" in bodies[-1]
        and f"on its merge request {merge_request}" in bodies[-1]
    )
    assert "caused by alice, who may not approve it" in bodies[-1]
    [opened] = [e for e in await stack.published(events.GateOpened) if e["data"]["gate_id"] == gate["id"]]
    assert (opened["data"]["author"], opened["data"]["merge_request_url"]) == ("alice", merge_request)


async def test_merge_request_approvals_count_only_where_the_policy_says_so_and_never_the_authors(
    stack: Stack,
) -> None:
    stack.gitlab.add_member(PROJECT, "alice", 40)  # a Maintainer, so only authorship stands in her way
    stack.gitlab.approve_merge_request(PROJECT, 7, "alice")  # the author approved before the gate opened
    gate = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.85))
    ignored = await _approved_hook(stack, "mia", "approval-1")

    async def handled() -> bool:
        async with stack.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(inbox)
                .where(inbox.c.event_type == events.MergeRequestChanged.type)
            )
        return count == 1

    await eventually(handled, "the approval handled under the policy that does not count it")
    write_policy(stack.folder, stack.model, approval={"merge_request_approval": True})
    counted = await _approved_hook(stack, "mia", "approval-2")
    assert ignored.status_code == counted.status_code == 202

    async def approved() -> dict[str, Any] | None:
        shown = (await stack.http.get(f"/api/v1/gates/{gate['id']}", headers=_bearer("dev"))).json()
        return shown if shown["state"] == "approved" else None

    shown = await eventually(approved, "the gate approved by the merge request's approval")
    assert shown["approvals"] == ["mia"]
    assert [(e["actor"], e["via"], e["outcome"], e["reason"]) for e in shown["audit"]][1:] == [
        ("mia", "gitlab", "accepted", "approved merge request !7")
    ]

    late_gate = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.86))
    audit = [(e.actor, e.via, e.outcome, e.reason) for e in await stack.audit(late_gate["id"])]
    assert audit[1] == ("alice", "gitlab", "refused", "the author of the change may not approve it")
    assert late_gate["state"] == "open"

    async def replies() -> list[str]:
        notes = [n["body"] for n in stack.gitlab.notes(PROJECT, 7) if "mlcd: approval of gate" in n["body"]]
        return notes or []

    assert any("by @mia accepted" in n for n in await eventually(replies, "the reply to the approval"))


async def _approved_hook(stack: Stack, username: str, key: str) -> httpx.Response:
    body = json.loads((REPO / "tests" / "fixtures" / "ingest" / "gitlab_merge_request.json").read_text())
    body["user"]["username"] = username
    body["project"]["path_with_namespace"] = PROJECT
    body["object_attributes"].update(action="approved", iid=7, last_commit={"id": COMMIT})
    headers = {
        "X-Gitlab-Token": GITLAB_SECRET,
        "X-Gitlab-Event": "Merge Request Hook",
        "Idempotency-Key": key,
    }
    return await stack.http.post("/hooks/gitlab", json=body, headers=headers)


async def test_policy_listed_gitlab_user_may_decide_without_a_role(stack: Stack) -> None:
    candidate = register(stack.mlflow_uri, stack.model, 0.85)
    gate = await stack.open_gate(candidate)

    await _comment(stack, "olga", f"/mlcd reject {gate['id']} drift in the holdout", "note-3")

    async def rejected() -> list[dict[str, Any]]:
        return await stack.journal(events.PromotionRejected)

    (rejection,) = await eventually(rejected, "the rejection through GitLab")
    assert (
        rejection["data"]["rejected_by"] == "olga" and rejection["data"]["reason"] == "drift in the holdout"
    )


async def test_gate_past_its_timeout_expires_and_rejects_the_promotion(stack: Stack) -> None:
    write_policy(stack.folder, stack.model, approval={"timeout": "1s"})
    candidate = register(stack.mlflow_uri, stack.model, 0.85)
    gate = await stack.open_gate(candidate)

    async def expired() -> list[dict[str, Any]]:
        return await stack.journal(events.PromotionRejected)

    (rejection,) = await eventually(expired, "the expiry")
    assert rejection["data"]["reason"] == "expired" and rejection["data"]["gate_id"] == gate["id"]
    late = await stack.decide(gate["id"], "approve", "olivia")
    assert late.status_code == 409 and late.json()["state"] == "expired"
    audit = [(e.actor, e.via, e.action, e.outcome) for e in await stack.audit(gate["id"])][1:]
    assert audit == [("mlcd", "timer", "expire", "accepted"), ("olivia", "api", "approve", "refused")]

    tags = await stack.decided_tags(candidate)
    assert (tags["mlcd.decision"], tags["mlcd.reason"]) == ("rejected", "expired")


async def test_alert_storm_yields_one_action_per_model(stack: Stack) -> None:
    storm = [_alert(stack.model, "warning", n) for n in range(25)] + [_alert(stack.model, "critical", 99)]
    await stack.publish(*storm)

    async def all_handled() -> bool:
        async with stack.engine.connect() as conn:
            handled = await conn.scalar(
                select(func.count()).select_from(inbox).where(inbox.c.event_type == events.AlertFired.type)
            )
        return handled == len(storm)

    await eventually(all_handled, "every alert handled")

    async def both_actions() -> bool:
        return bool(
            await stack.journal(events.RetrainRequested) and await stack.journal(events.RollbackRequested)
        )

    await eventually(both_actions, "the retrain and the rollback in the journal")
    assert len(await stack.journal(events.RetrainRequested)) == 1
    (rollback,) = await stack.published(events.RollbackRequested)
    assert rollback["data"]["requested_by"] == "monitoring-policy"


def _bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(who)}"}


async def _comment(stack: Stack, username: str, text: str, key: str) -> httpx.Response:
    body = json.loads((REPO / "tests" / "fixtures" / "ingest" / "gitlab_note_mr_approve.json").read_text())
    body["user"]["username"] = username
    body["object_attributes"]["note"] = text
    body["project"]["path_with_namespace"] = PROJECT
    headers = {"X-Gitlab-Token": GITLAB_SECRET, "X-Gitlab-Event": "Note Hook", "Idempotency-Key": key}
    return await stack.http.post("/hooks/gitlab", json=body, headers=headers)


def _alert(model: str, severity: str, n: int) -> events.Envelope[Any]:
    data = events.AlertFired(
        model=model,
        alert="FeatureDrift",
        severity=severity,
        fingerprint=f"fp-{n}",
        starts_at=datetime.now(UTC),
        annotations={"summary": "drift"},
    )
    return events.new_event(data, source="mlcd/test")


async def test_a_newer_candidate_supersedes_the_older_open_gate(stack: Stack) -> None:
    older = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.83))
    newer = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.85))

    async def superseded() -> dict[str, Any] | None:
        shown = (await stack.http.get(f"/api/v1/gates/{older['id']}", headers=_bearer("dev"))).json()
        return shown if shown["state"] == "superseded" else None

    shown = await eventually(superseded, "the older gate superseded")
    assert shown["reason"] == f"superseded by version {newer['model_version']} (gate {newer['id']})"
    assert ("mlcd", "policy", "supersede", "accepted") in [
        (e["actor"], e["via"], e["action"], e["outcome"]) for e in shown["audit"]
    ]
    late = await stack.decide(older["id"], "approve", "olivia")
    assert late.status_code == 409 and late.json()["state"] == "superseded"
    still = (await stack.http.get(f"/api/v1/gates/{newer['id']}", headers=_bearer("dev"))).json()
    assert still["state"] == "open"
    rejected = [
        e for e in await stack.published(events.PromotionRejected) if e["data"]["gate_id"] == older["id"]
    ]
    assert [e["data"]["model_version"] for e in rejected] == [older["model_version"]]


async def test_approving_rechecks_the_rules_when_the_champion_changed_since_the_gate_opened(
    stack: Stack,
) -> None:
    crown(stack.mlflow_uri, stack.model, register(stack.mlflow_uri, stack.model, 0.84))
    gate = await stack.open_gate(register(stack.mlflow_uri, stack.model, 0.86))
    better = register(stack.mlflow_uri, stack.model, 0.95)
    crown(stack.mlflow_uri, stack.model, better)  # another candidate won meanwhile

    refused = await stack.decide(gate["id"], "approve", "olivia")
    assert refused.status_code == 409, refused.text
    assert f"champion changed from version {gate['champion_version']} to {better}" in refused.json()["error"]
    assert "no_regression" in refused.json()["error"]
    shown = (await stack.http.get(f"/api/v1/gates/{gate['id']}", headers=_bearer("dev"))).json()
    assert shown["state"] == "open" and shown["approvals"] == []
    assert [(e["actor"], e["outcome"]) for e in shown["audit"]][-1] == ("olivia", "refused")


async def test_the_recheck_judges_rules_over_the_batch_with_the_batch_the_gate_was_opened_on(
    stack: Stack,
) -> None:
    """A rule that reads the batch's validation and the champion together is re-judged on approval with
    the same batch verdict as at opening; with no data view it errored and was waved through."""
    combined = "candidate.metrics.accuracy >= champion.metrics.accuracy - 0.005 || data.rows >= 10000"
    rules = [{"name": "no_regression_unless_big_batch", "expr": combined}]
    write_policy(stack.folder, stack.model, promotion={"rules": rules, "first_model_rules": rules})
    validated = events.DataValidated(
        model=stack.model, uri="s3://landing/churn/batch-1.csv", rows=500, suite="churn", result_uri=""
    )
    crown(stack.mlflow_uri, stack.model, register(stack.mlflow_uri, stack.model, 0.84))
    candidate = trained(stack.model, register(stack.mlflow_uri, stack.model, 0.86))
    async with stack.engine.begin() as conn:  # journaled as the validator and the trainer would have
        await outbox.add(conn, [events.new_event(validated, source="mlcd/test"), candidate], sent=True)
    await stack.publish(candidate)
    gate = await stack.gate_for(candidate.data.model_version)
    crown(stack.mlflow_uri, stack.model, register(stack.mlflow_uri, stack.model, 0.95))

    refused = await stack.decide(gate["id"], "approve", "olivia")
    assert refused.status_code == 409, refused.text
    assert "no_regression_unless_big_batch" in refused.json()["error"]
