"""The notifier service on the in-process bus and both stores: each outcome event becomes one message on
each channel the model's policy names (a real loopback Slack-compatible receiver, Teams and generic
webhooks, GitLab notes on the fake GitLab), once, also when the event is delivered again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, metrics
from mlcd.adapters.gitlab import GitLabCodeHost
from mlcd.bus.memory import MemoryBus
from mlcd.config import Settings
from mlcd.notifier import handlers, messages
from mlcd.policy import schema
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import gates, notices
from tests.fakes.gitlab_api import FakeGitLab
from tests.support.chat_receiver import ChatReceiver
from tests.support.flows import eventually

PROJECT, COMMIT = "ml/notified", "c0ffee" + "0" * 34
API = "http://mlcd.example:8080"
RULES = [
    events.RuleOutcome(
        name="accuracy_floor",
        expression="candidate.metrics.accuracy >= 0.8",
        passed=True,
        values={"candidate.metrics.accuracy": 0.86},
    )
]


def outcome_events(model: str, gate_id: str) -> list[events.Envelope[Any]]:
    """One event of each kind the notifier tells about, and two it does not (progress)."""
    expires = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    failed = [events.ExpectationResult(expectation="expect_column_values_to_not_be_null", column="pH",
                                       success=False, observed=12, details="12 nulls")]  # fmt: skip
    payloads: list[events.Payload] = [
        events.NoticeRaised(model=model, message="alert ModelDrift (info) fired: feature drift on pH"),
        events.DataRejected(
            model=model,
            uri=f"s3://landing/{model}/b1.csv",
            reason="1 of 9 expectations failed",
            suite="wine.json",
            failed=failed,
        ),
        events.TrainingFailed(
            model=model,
            run_id="run-7",
            reason="task train exited 1",
            failed_task="train",
            log_tail="Traceback (most recent call last):\nValueError: y contains NaN",
        ),
        events.PipelineBuildFailed(
            model=model, pipeline="wine_quality", commit=COMMIT, error="SyntaxError: x"
        ),
        events.GateOpened(
            model=model,
            gate_id=gate_id,
            model_version="4",
            champion_version="3",
            rules=RULES,
            approvals_required=1,
            approver_groups=["oncall"],
            expires_at=expires,
        ),
        events.PromotionApproved(model=model, model_version="4", gate_id=gate_id, approved_by=["olivia"]),
        events.PromotionRejected(
            model=model, model_version="5", gate_id="zz" + gate_id[2:], reason="expired"
        ),
        events.RolloutSucceeded(model=model, model_version="4", previous_version="3"),
        events.RolloutPaused(
            model=model,
            model_version="5",
            traffic_percent=10,
            reason="analysis inconclusive at 10% for 0:10:00: only 3 requests",
            figures={"requests": 3.0},
        ),
        events.RolledBack(
            model=model,
            from_version="5",
            to_version="4",
            reason="error rate 0.31 over 0.05",
            figures={"error_rate": 0.31},
        ),
        events.RolloutStepCompleted(model=model, model_version="4", traffic_percent=10),
        events.TrainingStarted(
            model=model, run_id="r", run_name="n", pipeline_version="1", data_uri="u", trigger_event_id="t"
        ),
    ]
    return [events.new_event(p, source="mlcd/test", id=f"{model}-{i}") for i, p in enumerate(payloads)]


@dataclass
class Notified:
    engine: AsyncEngine
    bus: MemoryBus
    model: str
    gate_id: str
    slack: ChatReceiver
    teams: ChatReceiver
    webhook: ChatReceiver
    gitlab: FakeGitLab

    async def publish(self, envelopes: list[events.Envelope[Any]]) -> None:
        await self.bus.publish([events.encode(e) for e in envelopes])

    async def settled(self, told: int) -> list[notices.Notice]:
        """The notices, once `told` events have theirs and none is pending."""

        async def done() -> list[notices.Notice] | None:
            async with self.engine.connect() as conn:
                found = await notices.listing(conn, model=self.model, limit=1000)
            complete = len({n.event_id for n in found}) >= told
            return found if complete and all(n.state != notices.PENDING for n in found) else None

        return list(await eventually(done, "every notice sent"))


async def _seed_gate(engine: AsyncEngine, model: str) -> str:
    cause = f"notify-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    gate = gates.Gate(
        id=gates.gate_id_for(cause), model=model, model_version="4", champion_version="3", state="approved",
        rules=[], approvals_required=1, approver_groups=["oncall"], author="alice", project=PROJECT,
        commit=COMMIT, created_at=now, expires_at=now + timedelta(hours=1), cause_event_id=cause,
    )  # fmt: skip
    async with engine.begin() as conn:
        return (await gates.open_gate(conn, gate)).id


@pytest.fixture
async def notified(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Notified]:
    model = f"notified_{uuid.uuid4().hex[:8]}"
    with (
        ChatReceiver() as slack,
        ChatReceiver(status=202, body=b"") as teams,
        ChatReceiver() as webhook,
        FakeGitLab() as gitlab,
    ):
        gitlab.add_project(PROJECT)
        folder = tmp_path / "policies"
        folder.mkdir()
        channels = [
            {"kind": "slack", "url": slack.url("slack")},
            {"kind": "teams", "url": teams.url("teams"), "events": ["gate_opened", "rolled_back"]},
            {"kind": "webhook", "url": webhook.url("json")},
            {"kind": "gitlab"},
        ]
        policy = {"model": model, "code": {"project": PROJECT}, "notify": {"channels": channels}}
        (folder / f"{model}.yaml").write_text(yaml.safe_dump(policy))
        settings = Settings(
            home=tmp_path / "home",
            policies_dir=folder,
            api_url=API,
            gitlab_url=gitlab.url,
            gitlab_token=SecretStr(gitlab.token),
            handler_backoff_initial_s=0.05,
        )
        ports = {"policies": PolicyBook(folder), "code_host": GitLabCodeHost(gitlab.url, gitlab.token)}
        bus = MemoryBus(events.TOPICS)
        host = ServiceHost(settings, [handlers.SERVICE], ports, bus=bus, engine=engine)
        await host.start()
        try:
            gate_id = await _seed_gate(engine, model)
            yield Notified(engine, bus, model, gate_id, slack, teams, webhook, gitlab)
        finally:
            await host.stop()


KINDS = ["notice", "data_rejected", "training_failed", "pipeline_build_failed", "gate_opened",
         "gate_decided", "gate_expired", "rollout_paused", "rollout_succeeded", "rolled_back"]  # fmt: skip


async def test_each_outcome_is_told_once_on_every_channel_also_when_redelivered(notified: Notified) -> None:
    sent = outcome_events(notified.model, notified.gate_id)
    await notified.publish(sent)
    first = await notified.settled(len(KINDS))

    # A redelivery of every event tells nothing twice.
    duplicates = metrics.EVENTS_DUPLICATE.labels(handlers.SERVICE.group)
    before = duplicates._value.get()
    await notified.publish(sent)

    async def skipped() -> bool:
        return bool(duplicates._value.get() >= before + len(KINDS))

    await eventually(skipped, "the redelivered events seen as duplicates")
    again = await notified.settled(len(KINDS))
    assert {(n.id, n.state) for n in again} == {(n.id, n.state) for n in first}

    slack = notified.slack.texts()
    assert len(slack) == len(KINDS) == len(set(slack))
    told = {n.kind for n in first}
    assert told == set(KINDS)  # progress events (a canary step, a run started) are not told
    titles_by_kind = {n.kind: n.message["title"] for n in first}
    by_kind = {kind: next(t for t in slack if f"] {title}*" in t) for kind, title in titles_by_kind.items()}
    assert "feature drift on pH" in by_kind["notice"]
    assert (
        "expect_column_values_to_not_be_null" in by_kind["data_rejected"]
        and "`pH`" in by_kind["data_rejected"]
    )
    assert "ValueError: y contains NaN" in by_kind["training_failed"]
    assert "mlcd retrain" in by_kind["training_failed"]
    assert "SyntaxError" in by_kind["pipeline_build_failed"]
    assert f"mlcd gates approve {notified.gate_id}" in by_kind["gate_opened"]
    assert (
        "$MLCD_API_TOKEN" in by_kind["gate_opened"]
        and f"{API}/api/v1/gates/{notified.gate_id}" in by_kind["gate_opened"]
    )
    assert "candidate.metrics.accuracy = 0.86" in by_kind["gate_opened"]
    assert "approved by olivia" in by_kind["gate_decided"]
    assert "expired" in by_kind["gate_expired"]
    assert "error_rate = 0.31" in by_kind["rolled_back"]
    assert "champion now" in by_kind["rollout_succeeded"]
    assert "only 3 requests" in by_kind["rollout_paused"] and "requests = 3" in by_kind["rollout_paused"]
    assert f"mlcd rollout promote {notified.model}" in by_kind["rollout_paused"]
    for kind, text in by_kind.items():
        print(f"--- {kind} (as the Slack-compatible receiver got it)\n{text}")

    teams = [m["body"] for m in notified.teams.delivered]
    assert [card["attachments"][0]["contentType"] for card in teams] == [
        "application/vnd.microsoft.card.adaptive"
    ] * 2
    titles = [card["attachments"][0]["content"]["body"][0]["text"] for card in teams]
    opened = f"[{notified.model}] promotion gate {notified.gate_id} waits for approval"
    assert sorted(titles) == sorted([opened, f"[{notified.model}] rolled back to version 4"])

    generic = [m["body"] for m in notified.webhook.delivered]
    assert sorted(body["kind"] for body in generic) == sorted(KINDS)
    keys = [headers["Idempotency-Key"] for headers in notified.webhook.headers]
    assert len(keys) == len(set(keys)) == len(KINDS)

    # GitLab: one note on the commit for the build failure and one for each state of the gate
    notes = [c["note"] for c in notified.gitlab.commit_comments(PROJECT, COMMIT)]
    assert len(notes) == 3, notes
    assert any("pipeline build failed" in note for note in notes)
    assert any(f"promotion gate {notified.gate_id} waits for approval" in note for note in notes)
    assert any(f"promotion gate {notified.gate_id} approved" in note for note in notes)
    # Data-triggered work has no commit: an issue in the model's project, one per notice
    issues = notified.gitlab.issues(PROJECT)
    assert sorted(i["title"] for i in issues) == sorted(
        [f"mlcd: [{notified.model}] data batch rejected", f"mlcd: [{notified.model}] training failed"]
    )
    for issue in issues:
        assert issue["labels"] == ["mlcd"] and "<!-- mlcd " in str(issue["description"])


async def test_a_failing_channel_is_retried_without_repeating_what_was_sent(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    model = f"retried_{uuid.uuid4().hex[:8]}"
    with (
        ChatReceiver() as slack,
        ChatReceiver(status=503, body=b"busy") as broken,
        ChatReceiver(status=404) as gone,
    ):
        folder = tmp_path / "policies"
        folder.mkdir()
        channels = [
            {"kind": "slack", "url": slack.url()},
            {"kind": "webhook", "url": broken.url("json")},
            {"kind": "teams", "url": gone.url("teams")},
        ]
        (folder / f"{model}.yaml").write_text(
            yaml.safe_dump({"model": model, "notify": {"channels": channels}})
        )
        settings = Settings(home=tmp_path / "home", policies_dir=folder, handler_backoff_initial_s=0.05,
                            handler_backoff_max_s=0.1, handler_max_attempts=3)  # fmt: skip
        ports = {"policies": PolicyBook(folder), "code_host": GitLabCodeHost("http://127.0.0.1:1", "t")}
        bus = MemoryBus(events.TOPICS)
        host = ServiceHost(settings, [handlers.SERVICE], ports, bus=bus, engine=engine)
        await host.start()
        try:
            told = events.new_event(
                events.NoticeRaised(model=model, message="m"), source="t", id=f"{model}-1"
            )
            await bus.publish([events.encode(told)])

            async def attempts_done() -> list[notices.Notice] | None:
                async with engine.connect() as conn:
                    found = await notices.listing(conn, model=model)
                webhook = [n for n in found if n.channel.startswith("webhook")]
                return found if webhook and webhook[0].attempts >= 3 else None

            found = {n.channel.split(":")[0]: n for n in await eventually(attempts_done, "three attempts")}
        finally:
            await host.stop()
    assert len(slack.delivered) == 1  # sent on the first attempt, not again on the two retries
    assert len(broken.received) == 3
    assert len(gone.received) == 1  # a 404 is permanent: not retried
    assert (found["slack"].state, found["webhook"].state, found["teams"].state) == (
        "sent",
        "pending",
        "failed",
    )
    assert "refused the message: 404" in found["teams"].error
    assert "XXXXSECRET" not in found["teams"].error + found["webhook"].error


def test_every_kind_a_policy_can_name_is_told() -> None:
    """A channel's `events` filter names kinds from the policy schema: each is one the notifier sends."""
    assert sorted(KINDS) == sorted(schema.NOTICE_KINDS)


def test_a_superseded_gate_is_told_as_superseded_with_where_to_decide_now() -> None:
    # as the gatekeeper closes an older open gate when a newer candidate's gate opens
    closed = events.PromotionRejected(
        model="m", model_version="4", gate_id="g1", reason="superseded by version 5 (gate g2)",
        rejected_by="mlcd",
    )  # fmt: skip
    message = messages.render(events.new_event(closed, source="mlcd/gatekeeper"), API)
    assert message is not None and message.kind == "gate_decided"
    assert message.title == "promotion gate g1 superseded"
    assert "superseded by version 5 (gate g2)" in message.what and "rejected by" not in message.what
    assert "mlcd gates list --model m --state open" in message.act


def test_only_state_changes_are_told() -> None:
    kinds = {type(e.data).__name__: messages.render(e, API) for e in outcome_events("m", "g1")}
    assert kinds["RolloutStepCompleted"] is None and kinds["TrainingStarted"] is None
    plain = events.new_event(events.PromotionApproved(model="m", model_version="2"), source="t")
    assert messages.render(plain, API) is None  # approved by policy alone: the rollout's notices follow


async def test_an_issue_is_opened_once_per_marker(tmp_path: Path) -> None:
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)
        host = GitLabCodeHost(gitlab.url, gitlab.token)
        first = await host.open_issue(PROJECT, "mlcd data_rejected e1", "mlcd: batch rejected", "why")
        again = await host.open_issue(PROJECT, "mlcd data_rejected e1", "mlcd: batch rejected", "why")
        other = await host.open_issue(PROJECT, "mlcd data_rejected e2", "mlcd: batch rejected", "why")
        assert first == again != other
        assert len(gitlab.issues(PROJECT)) == 2


async def test_a_data_triggered_gate_is_announced_in_an_issue_naming_its_uploader(notified: Notified) -> None:
    cause = f"data-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    seeded = gates.Gate(
        id=gates.gate_id_for(cause), model=notified.model, model_version="6", champion_version="4",
        state="open", rules=[], approvals_required=1, approver_groups=["oncall"], author="dana",
        project=PROJECT, commit="", created_at=now, expires_at=now + timedelta(hours=1), cause_event_id=cause,
    )  # fmt: skip
    async with notified.engine.begin() as conn:
        gate_id = (await gates.open_gate(conn, seeded)).id
    opened = events.GateOpened(
        model=notified.model, gate_id=gate_id, model_version="6", champion_version="4", rules=RULES,
        approvals_required=1, approver_groups=["oncall"], expires_at=seeded.expires_at, author="dana",
    )  # fmt: skip
    await notified.publish([events.new_event(opened, source="mlcd/gatekeeper")] * 2)
    await notified.settled(1)

    [issue] = notified.gitlab.issues(PROJECT)  # no commit to note on, and one issue for the redelivery too
    assert issue["title"] == f"mlcd: [{notified.model}] promotion gate {gate_id} waits for approval"
    assert f"mlcd gates approve {gate_id}" in issue["description"]
    assert "caused by dana, who may not approve it" in issue["description"]
    assert notified.gitlab.commit_comments(PROJECT, COMMIT) == []
