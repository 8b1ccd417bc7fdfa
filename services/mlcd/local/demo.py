"""`mlcd demo`: the whole story on the embedded defaults, played through the real HTTP endpoints.

A push rebuilds the wine pipeline; a clean batch is validated, trained, gated, approved by an on-call
engineer and rolled out with real predictions flowing; a corrupt batch is rejected and never trained; a
drifted batch trains a second version that rolls out, and a drift alert rolls serving back. The timeline
is printed and written to MLCD_HOME/demo-report.md; the exit code is 0 only if every expected event happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from mlcd.config import Settings
from mlcd.local.up import up

MODEL = "wine_quality"
PROJECT = "ml/wine-quality"
ONCALL_TOKEN_NAME = "alice"
INTERRUPTED = 130  # the exit code of a story cut short by Ctrl-C (128 + SIGINT), as a shell expects
Event = dict[str, Any]


_FAILURES: dict[str, tuple[str, ...]] = {
    "mlcd.training.pipeline_published.v1": ("mlcd.training.pipeline_build_failed.v1",),
    "mlcd.data.validated.v1": ("mlcd.data.rejected.v1",),
    "mlcd.training.succeeded.v1": ("mlcd.training.failed.v1",),
    "mlcd.promotion.gate_opened.v1": ("mlcd.promotion.rejected.v1",),
    "mlcd.serving.rollout_succeeded.v1": ("mlcd.serving.rolled_back.v1",),
}


def _why(event: Event) -> str:
    data = event.get("data") or {}
    return str(data.get("reason") or data.get("error") or data)[:300]


class StepMissing(Exception):
    """An expected event did not happen in time; the message names the step and the event."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM reached `mlcd up`'s one signal path, which stopped the services under the story."""


@dataclass
class Story:
    client: httpx.AsyncClient
    settings: Settings
    oncall_token: str
    started: float = field(default_factory=time.monotonic)
    log: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        stamp = f"{time.monotonic() - self.started:6.1f}s"
        self.log.append(f"{stamp}  {line}")
        print(f"{stamp}  {line}", flush=True)

    def secret(self, name: str) -> str:
        value = getattr(self.settings, name)
        assert value is not None, name
        return str(value.get_secret_value())

    async def journal(self) -> list[Event]:
        response = await self.client.get("/api/v1/events", params={"limit": 1000}, headers=self._auth())
        response.raise_for_status()
        return list(reversed(response.json()))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.oncall_token}"}

    async def expect(
        self, step: str, event_type: str, timeout_s: float, where: Callable[[Event], bool] = lambda e: True
    ) -> Event:
        """Wait for the event; a failure event of the same stage that appears meanwhile ends the wait."""
        deadline = time.monotonic() + timeout_s
        known = {e["id"] for e in await self.journal()}
        while time.monotonic() < deadline:
            for event in await self.journal():
                if event.get("subject") != MODEL:
                    continue
                if event["type"] == event_type and where(event):
                    return event
                if event["id"] not in known and event["type"] in _FAILURES.get(event_type, ()):
                    raise StepMissing(f"step '{step}': {event['type']} instead: {_why(event)}")
            await asyncio.sleep(0.3)
        raise StepMissing(f"step '{step}': no {event_type} for {MODEL} within {timeout_s:.0f}s")

    async def post(self, path: str, body: Any, headers: dict[str, str]) -> None:
        response = await self.client.post(path, json=body, headers=headers)
        if response.status_code >= 300:
            raise StepMissing(f"{path} answered {response.status_code}: {response.text}")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


def _push_hook(commit: str) -> dict[str, Any]:
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": "0" * 40,
        "after": commit,
        "ref": "refs/heads/main",
        "checkout_sha": commit,
        "user_username": "dana",
        "user_name": "Dana Data-Scientist",
        "user_email": "dana@example.com",
        "project_id": 42,
        "project": {"id": 42, "path_with_namespace": PROJECT, "default_branch": "main"},
        "commits": [
            {
                "id": commit,
                "message": "Tune the wine-quality pipeline",
                "timestamp": datetime.now(UTC).isoformat(),
                "author": {"name": "Dana", "email": "dana@example.com"},
                "added": [],
                "modified": ["pipelines/wine_quality/pipeline.py"],
                "removed": [],
            }
        ],
        "total_commits_count": 1,
    }


def _drift_alert() -> dict[str, Any]:
    starts = datetime.now(UTC).isoformat()
    return {
        "version": "4",
        "groupKey": '{}:{alertname="PredictionDrift"}',
        "status": "firing",
        "receiver": "mlcd",
        "groupLabels": {"alertname": "PredictionDrift"},
        "commonLabels": {"alertname": "PredictionDrift", "model": MODEL, "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "PredictionDrift", "model": MODEL, "severity": "critical"},
                "annotations": {"summary": "Feature distribution drifted beyond the PSI threshold"},
                "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph",
                "fingerprint": hashlib.sha256(starts.encode()).hexdigest()[:16],
            }
        ],
    }


def _make_batches(repo: Path, out: Path) -> dict[str, Path]:
    script = repo / "pipelines" / MODEL / "make_batches.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=120)
    found = {p.stem: p for p in out.glob("*.csv")}
    return {
        kind: next(p for name, p in found.items() if kind in name) for kind in ("clean", "corrupt", "drift")
    }


def _land(story: Story, batch: Path, name: str) -> str:
    """Drop a batch into the landing bucket folder: the embedded MinIO stand-in notifies /hooks/minio."""
    target = story.settings.home / "objects" / "landing" / MODEL / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.part")  # the watcher skips dot-files: it never sees half a batch
    shutil.copy(batch, partial)
    partial.replace(target)
    return f"{MODEL}/{name}"


async def _predictions(story: Story, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Real inference requests through the Open Inference Protocol while the rollout moves."""
    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [1, 13],
                "datatype": "FP64",
                "data": [13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050.0],
            }
        ]
    }
    while not stop.is_set():
        try:
            response = await story.client.post(f"/v2/models/{MODEL}/infer", json=body)
            counts["ok" if response.status_code == 200 else "error"] += 1
        except httpx.HTTPError:
            counts["error"] += 1
        await asyncio.sleep(0.05)


async def _notices(story: Story, stop: asyncio.Event) -> None:
    """Print each notice the notifier records as people would read it (once, whatever its channels)."""
    told: set[str] = set()
    while not stop.is_set():
        try:
            response = await story.client.get("/api/v1/notices", params={"limit": 200}, headers=story._auth())
            found = response.json() if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            found = []
        for notice in reversed(found):
            if notice["event_id"] in told:
                continue
            told.add(notice["event_id"])
            message = notice["message"]
            story.say(f"notice: [{message['model']}] {message['title']}")
            story.say(f"        {message['what']}")
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _approve_and_roll_out(story: Story, gate: Event, step: str) -> Event:
    gate_id = gate["data"]["gate_id"]
    story.say(f"on-call engineer {ONCALL_TOKEN_NAME} approves gate {gate_id}")
    await story.post(
        f"/api/v1/gates/{gate_id}/approve",
        {"reason": "metrics look good"},
        {"Authorization": f"Bearer {story.oncall_token}"},
    )
    version = gate["data"]["model_version"]
    await story.expect(
        step, "mlcd.promotion.approved.v1", 30, lambda e: e["data"]["model_version"] == version
    )
    stop, counts = asyncio.Event(), {"ok": 0, "error": 0}
    traffic = asyncio.create_task(_predictions(story, stop, counts))
    try:
        done = await story.expect(
            step, "mlcd.serving.rollout_succeeded.v1", 90, lambda e: e["data"]["model_version"] == version
        )
    finally:
        stop.set()
        await traffic
    story.say(f"version {version} is champion; {counts['ok']} predictions served during the rollout")
    return done


async def _play(story: Story, repo: Path) -> None:
    story.say("a GitLab push changes pipelines/wine_quality → builder compiles and publishes")
    commit = hashlib.sha1(uuid.uuid4().bytes, usedforsecurity=False).hexdigest()
    await story.post(
        "/hooks/gitlab",
        _push_hook(commit),
        {
            "X-Gitlab-Token": story.secret("gitlab_webhook_secret"),
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        },
    )
    await story.expect("pipeline built", "mlcd.training.pipeline_published.v1", 60)

    batches = _make_batches(repo, story.settings.home / "batches")
    story.say("a clean batch lands → validated → trained → rules → gate")
    _land(story, batches["clean"], "batch-01-clean.csv")
    await story.expect("clean batch validated", "mlcd.data.validated.v1", 60)
    first = await story.expect("first model trained", "mlcd.training.succeeded.v1", 120)
    gate = await story.expect(
        "gate opened",
        "mlcd.promotion.gate_opened.v1",
        30,
        lambda e: e["data"]["model_version"] == first["data"]["model_version"],
    )
    await _approve_and_roll_out(story, gate, "first rollout")

    story.say("a corrupt batch lands → rejected, never trained")
    corrupt_key = _land(story, batches["corrupt"], "batch-02-corrupt.csv")
    rejected = await story.expect("corrupt batch rejected", "mlcd.data.rejected.v1", 60)
    story.say(f"rejected: {rejected['data']['reason']}")
    if any(
        e["type"] == "mlcd.training.started.v1" and corrupt_key in e["data"].get("data_uri", "")
        for e in await story.journal()
    ):
        raise StepMissing("step 'corrupt batch never trained': a training run started on the corrupt batch")

    story.say("a drifted batch lands → a second version trains, is approved and rolls out")
    _land(story, batches["drift"], "batch-03-drift.csv")
    second = await story.expect(
        "second model trained",
        "mlcd.training.succeeded.v1",
        150,
        lambda e: e["data"]["model_version"] != first["data"]["model_version"],
    )
    gate = await story.expect(
        "second gate opened",
        "mlcd.promotion.gate_opened.v1",
        30,
        lambda e: e["data"]["model_version"] == second["data"]["model_version"],
    )
    await _approve_and_roll_out(story, gate, "second rollout")

    story.say("Alertmanager reports drift (critical) → the policy rolls serving back")
    await story.post(
        "/hooks/alertmanager",
        _drift_alert(),
        {"Authorization": f"Bearer {story.secret('alertmanager_token')}"},
    )
    await story.expect("drift alert received", "mlcd.monitoring.alert_fired.v1", 30)
    await story.expect("rollback requested", "mlcd.serving.rollback_requested.v1", 30)
    back = await story.expect("rolled back", "mlcd.serving.rolled_back.v1", 60)
    story.say(f"serving back on version {back['data']['to_version']} (was {back['data']['from_version']})")


def _timeline(events: list[Event]) -> list[str]:
    return [
        f"{str(e['time'])[11:23]}  {e['type']:<44} {e.get('subject') or '-':<14} {e['id']}" for e in events
    ]


def _write_tokens(home: Path) -> str:
    import secrets

    token = "mlcd_" + secrets.token_urlsafe(24)
    entries = [
        {
            "name": ONCALL_TOKEN_NAME,
            "groups": ["oncall"],
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        }
    ]
    path = home / "api-tokens.yaml"
    path.write_text(yaml.safe_dump(entries))
    return token


async def run_demo(settings: Settings) -> int:
    repo = Path.cwd()
    base_home = settings.home
    home = base_home / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    home.mkdir(parents=True)
    oncall_token = _write_tokens(home)
    port = _free_port(settings.http_port)
    demo_settings = settings.model_copy(
        update={"home": home, "http_port": port, "api_tokens_file": home / "api-tokens.yaml"}
    )
    print(f"mlcd demo: state in {home}, API on http://127.0.0.1:{port}", flush=True)
    ready, stop = asyncio.Event(), asyncio.Event()
    runtime = asyncio.create_task(up(demo_settings, stop=stop, on_ready=ready.set))
    outcome = "complete"
    events: list[Event] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        from mlcd.local.secrets import with_webhook_secrets

        story = Story(client, with_webhook_secrets(demo_settings), oncall_token)
        try:
            await _wait_ready(ready, runtime)
            told = asyncio.create_task(_notices(story, stop_notices := asyncio.Event()))
            try:
                await _play_while_running(story, repo, stop)
            finally:
                stop_notices.set()
                await told
        except StepMissing as e:
            outcome = f"INCOMPLETE: {e}"
        except Interrupted:
            outcome = "INTERRUPTED: stopped by a signal before the story ended"
        finally:
            try:
                events = await story.journal()
            except httpx.HTTPError:
                events = []
            stop.set()
            await asyncio.gather(runtime, return_exceptions=True)
    report = _report(story, events, outcome, time.monotonic() - story.started)
    (base_home / "demo-report.md").write_text(report)
    print(
        "\n".join(
            [
                "",
                "timeline:",
                *_timeline(events),
                "",
                f"demo {outcome}",
                f"report: {base_home / 'demo-report.md'}",
            ]
        )
    )
    return 0 if outcome == "complete" else INTERRUPTED if outcome.startswith("INTERRUPTED") else 1


async def _play_while_running(story: Story, repo: Path, stop: asyncio.Event) -> None:
    """Play the story; Interrupted when a signal set `stop` first (`mlcd up`'s one signal path sets it
    before it stops HTTP), instead of failing on the closed port."""
    play = asyncio.create_task(_play(story, repo))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({play, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if stop.is_set():
        play.cancel()
        await asyncio.gather(play, stopped, return_exceptions=True)
        raise Interrupted
    await play  # a missing step raises StepMissing here


async def _wait_ready(ready: asyncio.Event, runtime: asyncio.Task[int]) -> None:
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({waiter, runtime}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if runtime.done():
            error = runtime.exception()
            if error is None and runtime.result() > 128:  # a signal cut `mlcd up`'s start short
                raise Interrupted
            raise StepMissing(f"step 'start': mlcd up stopped: {error or runtime.result()}")
        raise StepMissing("step 'start': mlcd up was not ready within 180s")


def _report(story: Story, events: list[Event], outcome: str, seconds: float) -> str:
    lines = [
        "# mlcd demo report",
        "",
        f"Outcome: **{outcome}** in {seconds:.1f} s.",
        "",
        "## Story",
        "",
        "```",
        *story.log,
        "```",
        "",
        "## Timeline (event journal, oldest first)",
        "",
        "| time | event type | model | id |",
        "|---|---|---|---|",
        *[f"| {e['time']} | `{e['type']}` | {e.get('subject') or '-'} | `{e['id']}` |" for e in events],
        "",
    ]
    return "\n".join(lines)
