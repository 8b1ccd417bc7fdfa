"""The on-call page in a real headless Chromium over what `mlcd up` composes: the API, the deployer on the
in-process bus with its relay, local serving of real MLflow versions. The page drives every on-call action
and the test reads each result on the page; it saves screenshots under tests/e2e/artifacts/.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import bootstrap, events, http, journal_api, oncall_api, token_file
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.bus import runtime
from mlcd.config import Settings
from mlcd.deployer import app as deployer_app
from mlcd.gatekeeper import app as gatekeeper_app
from mlcd.local import ui
from mlcd.policy.book import PolicyBook
from mlcd.store import database, dead_letters, gates, migrate
from mlcd.store.tables import outbox
from tests.support import ingest_app
from tests.support.serving_models import GOOD_ROWS, infer_body, register_versions

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "mlcd_ui_test_token_alice"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
WAIT_MS = 60_000


def _tokens(path: Path, groups: list[str]) -> Path:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    path.write_text(yaml.safe_dump([{"name": "alice", "groups": groups, "token_sha256": digest}]))
    return path


def _gate(model: str, version: str, champion: str, cause: str, accuracy: float) -> gates.Gate:
    now = datetime.now(UTC)
    return gates.Gate(
        id=gates.gate_id_for(cause),
        model=model,
        model_version=version,
        champion_version=champion,
        state="open",
        rules=[
            {
                "name": "accuracy_floor",
                "expression": "candidate.metrics.accuracy >= 0.80",
                "passed": True,
                "values": {"candidate.metrics.accuracy": accuracy},
                "error": "",
            },
            {
                "name": "no_regression_against_the_champion_with_a_long_rule_name_that_must_wrap",
                "expression": (
                    "champion == null || candidate.metrics.accuracy >= champion.metrics.accuracy - 0.02"
                ),
                "passed": True,
                "values": {"candidate.metrics.accuracy": accuracy, "champion.metrics.accuracy": 0.91},
                "error": "",
            },
        ],
        approvals_required=1,
        approver_groups=["oncall"],
        author="dana",
        project="ml/wine-quality",
        commit="4fae0b2f",
        created_at=now,
        expires_at=now + timedelta(hours=24),
        cause_event_id=cause,
        merge_request_url=f"https://gitlab.example.com/ml/wine-quality/-/merge_requests/{version}",
    )


async def _open(engine: AsyncEngine, gate: gates.Gate) -> str:
    async with engine.begin() as conn:
        return (await gates.open_gate(conn, gate)).id


# --- the page over hand-composed routers: the gate decision it always had ------------------------------


@pytest.fixture
async def site(tmp_path: Path, mlflow_uri: str) -> AsyncIterator[tuple[str, AsyncEngine]]:
    engine = database.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mlcd.db'}")
    await migrate.upgrade(engine)
    identify = token_file.Identifier(_tokens(tmp_path / "tokens.yaml", ["oncall"]))
    policies = PolicyBook(REPO / "policies")
    waker = runtime.RelayWaker()
    app = http.create_app(
        [
            ui.router(policies, identify),
            gatekeeper_app.router(engine, waker, policies, identify),
            deployer_app.router(engine, waker, MlflowRegistry(mlflow_uri), identify, policies),
            journal_api.router(lambda: engine, identify),
            oncall_api.router(
                lambda: engine, identify, policies, oncall_api.Links.of(mlflow_uri, None, None)
            ),
        ],
        readiness=_ready,
    )
    async with ingest_app.serving(app) as url:
        yield url, engine
    await engine.dispose()


async def _ready() -> dict[str, str | None]:
    return {}


async def test_oncall_engineer_approves_a_gate_from_the_page(
    site: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    base, engine = site
    gate_id = await _open(engine, _gate("wine_quality", "7", "6", "ui-test-cause", 0.93))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = await browser.new_page()
        await page.goto(f"{base}/ui")
        await page.fill("#token", TOKEN)
        await page.click("#sign-in")
        gate = page.locator(f"[data-gate='{gate_id}']")
        await gate.wait_for(timeout=15_000)
        table_text = await gate.inner_text()
        await page.locator("#models td", has_text="wine_quality").wait_for(timeout=15_000)
        await gate.locator("button.approve").click()
        await page.click("#confirm-ok")
        await page.locator("#message", has_text="approved").wait_for(timeout=15_000)
        await browser.close()

    assert "accuracy_floor" in table_text and "pass" in table_text and "0.93" in table_text
    async with engine.connect() as conn:
        decided = await gates.get(conn, gate_id)
        audit = await gates.audit_log(conn, gate_id)
        emitted = list(await conn.execute(select(outbox.c.event_type)))
    assert decided is not None and decided.state == "approved" and decided.decided_by == "alice"
    assert any(entry.via == "ui" for entry in audit)
    assert ("mlcd.promotion.approved.v1",) in [tuple(row) for row in emitted]


async def test_page_refuses_a_wrong_token(site: tuple[str, AsyncEngine]) -> None:
    from playwright.async_api import async_playwright

    base, _ = site
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = await browser.new_page()
        await page.goto(f"{base}/ui")
        await page.fill("#token", "not-a-token")
        await page.click("#sign-in")
        await page.locator("#login-error", has_text="refused").wait_for(timeout=15_000)
        await browser.close()


# --- the page over the composed system: every action, the canary, the pictures ------------------------


@dataclass
class World:
    url: str
    model: str
    engine: AsyncEngine
    waker: runtime.RelayWaker
    batch: str
    rejected_batch: str
    letter_event_id: str

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


OTHER = "zz_other_model"  # sorts after the test's model, so the page opens on the test's model


def _policy(folder: Path, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "defaults.yaml").write_text((REPO / "policies" / "defaults.yaml").read_text())
    (folder / f"{OTHER}.yaml").write_text(yaml.safe_dump({"model": OTHER}))
    policy = {
        "model": model,
        "training": {"pipeline": "wine_quality"},
        "approval": {"required": True, "groups": ["oncall"]},
        "rollout": {
            "steps": [10, 50, 100],
            "interval": "2s",
            "thresholds": {"max_error_rate": 0.05, "max_p95_latency_s": 2.0, "min_requests": 10},
            "progress_deadline": "10m",
            "on_inconclusive": "pause",
        },
    }
    (folder / f"{model}.yaml").write_text(yaml.safe_dump(policy))
    return folder


async def _upstream(world_engine: AsyncEngine, waker: runtime.RelayWaker, model: str) -> tuple[str, str]:
    """What the validator, builder and trainer journal for version 2 and a rejected batch, as they emit it."""
    batch = f"s3://landing/{model}/batch-07.csv"
    rejected = f"s3://landing/{model}/batch-08.csv"
    commit = "4fae0b2f9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
    run_id = "7d1e2f30-run"
    started = events.TrainingStarted(
        model=model,
        run_id=run_id,
        run_name=f"{model}-7d1e2f30",
        pipeline_version="wine_quality-4fae0b2f",
        data_uri=batch,
        trigger_event_id="data-arrived-07",
    )
    failing = events.ExpectationResult(
        expectation="expect_column_values_to_be_between",
        column="alcohol",
        success=False,
        observed={"element_count": 1599, "unexpected_count": 2, "unexpected_examples": [-3.2, 99.0]},
    )
    async with runtime.unit_of_work(world_engine, "mlcd/test-upstream", waker) as tx:
        tx.emit(
            events.DataArrived(
                model=model, bucket="landing", key=f"{model}/batch-07.csv", uri=batch, size=48213
            )
        )
        tx.emit(events.DataValidated(model=model, uri=batch, rows=1599, suite="wine_quality", result_uri=""))
        tx.emit(
            events.PipelinePublished(
                model=model,
                pipeline="wine_quality",
                version="wine_quality-4fae0b2f",
                commit=commit,
                package_uri="s3://pipelines/wine_quality.yaml",
            )
        )
        tx.emit(started)
        tx.emit(
            events.TrainingSucceeded(
                model=model,
                run_id=run_id,
                model_version="2",
                metrics={"accuracy": 0.93, "f1_macro": 0.9},
                data_uri=batch,
                pipeline_version="wine_quality-4fae0b2f",
                commit=commit,
                author="dana",
            )
        )
        tx.emit(events.RetrainRequested(model=OTHER, reason="another model's event"))
        tx.emit(
            events.DataRejected(
                model=model,
                uri=rejected,
                reason="1 of 12 expectations failed: alcohol: values between (2 unexpected: -3.2, 99.0)",
                suite="wine_quality",
                failed=[failing],
            )
        )
    return batch, rejected


async def _park_a_dead_letter(engine: AsyncEngine, model: str) -> str:
    """A notice the notifier could not deliver, parked the way the runtime parks it."""
    notice = events.new_event(
        events.NoticeRaised(model=model, message="rollout of version 3 needs a look"), source="mlcd/deployer"
    )
    record = events.encode(notice)
    async with engine.begin() as conn:
        await dead_letters.park(conn, "notifier", record, "chat webhook answered 500 five times", 5)
    return notice.id


@pytest.fixture
async def world(tmp_path: Path, mlflow_uri: str) -> AsyncIterator[World]:
    model = f"ui_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(register_versions, mlflow_uri, model)
    settings = Settings(
        home=tmp_path / "home",
        policies_dir=_policy(tmp_path / "policies", model),
        api_tokens_file=_tokens(tmp_path / "tokens.yaml", ["oncall", "admin"]),
        mlflow_tracking_uri=mlflow_uri,
    )
    system = bootstrap.system(settings, [bootstrap.service("deployer")], http=True, ui=True)
    await system.host.start()
    try:
        assert system.app is not None and system.ports is not None
        ports = system.ports
        first = await ports.registry.get_version(model, "1")
        await ports.serving.promote(model, "1", first.serving_uri)
        await ports.registry.set_alias(model, "champion", "1")
        engine, waker = system.host.engine, system.host.waker
        batch, rejected = await _upstream(engine, waker, model)
        letter = await _park_a_dead_letter(engine, model)
        async with ingest_app.serving(system.app) as url:
            yield World(url, model, engine, waker, batch, rejected, letter)
    finally:
        await system.host.stop()
        await system.close()


async def _rollouts(world: World) -> list[dict[str, Any]]:
    async with world.api() as client:
        answer = await client.get(f"/api/v1/models/{world.model}/rollouts")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


async def _until(check: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _measured(world: World, step: int, at_least: int) -> bool:
    found = await _rollouts(world)
    analyses = (
        [m for m in found[0]["measurements"] if m["step"] == step and m["check"] == "request-count"]
        if found
        else []
    )
    return len(analyses) >= at_least


async def _canary_traffic_until_step_two(world: World) -> None:
    """Requests to the candidate's revision, six at once every 0.2 s, until the rollout leaves its first step:
    more than min_requests (10) in a 2 s analysis window even on a loaded machine, and at most one burst,
    fewer than min_requests, in the 50 % step's window (so the rollout stays there, inconclusive)."""
    infer = f"/v2/models/{world.model}/versions/2/infer"
    async with world.api() as client:
        while True:
            rollout = (await client.get(f"/api/v1/models/{world.model}")).json()["rollout"]
            if rollout is None or rollout["step"] >= 2:
                return
            await asyncio.gather(*(client.post(infer, json=infer_body(GOOD_ROWS)) for _ in range(6)))
            await asyncio.sleep(0.2)


async def _tab_reaches(page: Any, presses: int = 400) -> set[str]:
    """What Tab reaches from the top of the page: ids, and data-replay buttons as `replay`."""
    await page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    reached: set[str] = set()
    for _ in range(presses):
        await page.keyboard.press("Tab")
        name: str = await page.evaluate(
            "(() => { const a = document.activeElement; if (!a || a === document.body) return '';"
            " return a.dataset.replay ? 'replay' : a.id || a.tagName.toLowerCase(); })()"
        )
        if name in reached and name == "sign-out":
            break  # around the page once
        reached.add(name)
    return reached


async def _overflowing(page: Any) -> list[str]:
    """Cards, gates, chain nodes, scrolling boxes inside cards (a rule table, a batch's expectations) and the
    page itself whose content is wider than they are."""
    found: list[str] = await page.evaluate(
        """() => {
          const wide = [];
          if (document.documentElement.scrollWidth > window.innerWidth + 1) wide.push("page");
          const boxes = ".card, .gate, .chain li.node, .action-log li, #message,"
            + " .card .scroll, .gate .scroll";
          for (const node of document.querySelectorAll(boxes)) {
            if (node.offsetParent !== null && node.scrollWidth > node.clientWidth + 1)
              wide.push(node.className + ":" + node.textContent.slice(0, 60));
          }
          return wide;
        }"""
    )
    return found


@pytest.mark.timeout(600)  # about 65 s alone; every action waits for the deployer's real ticks
async def test_oncall_drives_every_action_and_reads_the_results_on_the_page(world: World) -> None:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    model = world.model
    async with world.api() as client:
        reject_gate = await _open(world.engine, _gate(model, "3", "1", f"cause-3-{model}", 0.81))
        approve_gate = await _open(world.engine, _gate(model, "2", "1", f"cause-2-{model}", 0.93))
        assert (await client.get(f"/api/v1/models/{model}/rollouts?limit=0")).status_code == 400
        assert (await client.get("/api/v1/models/no_such_model/chain")).status_code == 404

    urls: list[str] = []
    complaints: list[str] = []  # script errors, refused content (CSP), failed requests
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("request", lambda request: urls.append(request.url))
        page.on(
            "console", lambda message: complaints.append(message.text) if message.type == "error" else None
        )
        page.on("pageerror", lambda error: complaints.append(str(error)))
        await page.goto(f"{world.url}/ui")
        await page.fill("#token", TOKEN)
        await page.click("#sign-in")

        # What is live and why: version 1 serves everything; the chain of version 2 links out to MLflow.
        await page.locator("#champion-version", has_text="1").wait_for(timeout=WAIT_MS)
        await page.locator("#serving .split .stable", has_text="100%").wait_for(timeout=WAIT_MS)
        await page.evaluate("window.loadedOnce = true")  # gone if anything below reloaded the page
        training = page.locator("#chain li[data-kind='training_run']")
        await training.wait_for(timeout=WAIT_MS)
        chain_kinds = await page.locator("#chain li[data-kind]").evaluate_all(
            "nodes => nodes.map(n => n.dataset.kind)"
        )
        mlflow_link = await page.locator("#chain li[data-kind='model_version'] a").get_attribute("href")
        await page.locator("#chain li[data-kind='gate'] a").wait_for(timeout=WAIT_MS)
        merge_request_link = await page.locator("#chain li[data-kind='gate'] a").get_attribute("href")
        batch_text = await page.locator(f"[data-batch='{world.rejected_batch}']").inner_text()
        await page.locator(f"[data-gate='{reject_gate}']").wait_for(timeout=WAIT_MS)
        await page.locator(f"[data-gate='{approve_gate}']").wait_for(timeout=WAIT_MS)
        await page.locator("#open-gate a").wait_for(timeout=WAIT_MS)  # its own request, not the list's
        open_gate_text = await page.locator("#open-gate").inner_text()
        gates_wide_at_desktop = await _overflowing(page)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_timeout(300)  # layout settles after the resize; nothing to wait on but the frame
        gates_wide_on_phone = await _overflowing(page)
        await page.set_viewport_size({"width": 1280, "height": 800})
        await page.wait_for_timeout(300)

        # Reject: the page refuses without a reason, then rejects with one.
        gate3 = page.locator(f"[data-gate='{reject_gate}']")
        await gate3.locator("button.reject").click()
        await page.locator("#message", has_text="needs a reason").wait_for(timeout=WAIT_MS)
        await gate3.locator("input").fill("accuracy 0.81 is too close to the floor")
        await gate3.locator("button.reject").click()
        await page.click("#confirm-ok")
        await page.locator(
            "#action-log li[data-label^='reject'] .result", has_text="mlcd.promotion.rejected.v1"
        ).wait_for(timeout=WAIT_MS)

        # Approve: the deployer starts the canary at 10 %; without traffic its analysis is inconclusive.
        await page.locator(f"[data-gate='{approve_gate}'] button.approve").click()
        await page.click("#confirm-ok")
        await page.locator(
            "#action-log li[data-label^='approve'] .result", has_text="mlcd.promotion.approved.v1"
        ).wait_for(timeout=WAIT_MS)
        await page.locator("#rollout-state", has_text="at 10 %").wait_for(timeout=WAIT_MS)
        await _until(lambda: _measured(world, 1, 2), "two inconclusive analyses at 10 %")
        await asyncio.wait_for(_canary_traffic_until_step_two(world), WAIT_MS / 1000)
        await page.locator("#rollout-state", has_text="at 50 %").wait_for(timeout=WAIT_MS)
        await _until(lambda: _measured(world, 2, 1), "an analysis at 50 %")

        # Pause mid-canary, and keep the picture.
        await page.click("#act-pause")
        await page.click("#confirm-ok")
        await page.locator("#rollout-state", has_text="paused").wait_for(timeout=WAIT_MS)
        await (
            page.locator("#action-log li[data-label^='pause']")
            .locator(".result", has_text="mlcd.serving.rollout_paused.v1")
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#canary-chart svg circle.measurement.pass").first.wait_for(timeout=WAIT_MS)
        await page.locator("#canary-chart svg circle.measurement.inconclusive").first.wait_for(
            timeout=WAIT_MS
        )
        await page.locator("#chain li[data-kind='rollout_step'][data-state='paused']").wait_for(
            timeout=WAIT_MS
        )
        mid_canary_wide = await _overflowing(page)
        await page.screenshot(path=str(ARTIFACTS / "ui-mid-canary.png"), full_page=True)
        chart_checks = await page.locator("#canary-chart svg g.check").evaluate_all(
            "nodes => nodes.map(n => n.dataset.check)"
        )
        thresholds = await page.locator("#canary-chart svg line.threshold").count()
        split_text = await page.locator("#serving").inner_text()
        candidate = await page.locator("#candidate-version").inner_text()
        decided_by = await page.locator("#decision-by").inner_text()
        decision_text = await page.locator("#last-decision").inner_text()
        reached = await _tab_reaches(page)

        # Resume, then abort: the rollout is rolled back and the page shows the deployer's event.
        await page.click("#act-resume")
        await page.click("#confirm-ok")
        await page.locator("#rollout-state", has_text="running").wait_for(timeout=WAIT_MS)
        await (
            page.locator("#action-log li[data-label^='resume']")
            .locator(".result", has_text="mlcd.serving.rollout_resumed.v1")
            .wait_for(timeout=WAIT_MS)
        )
        await page.click("#act-abort")
        await page.click("#confirm-ok")
        aborted = page.locator("#action-log li[data-label^='abort']").locator(
            ".result", has_text="rolled_back"
        )
        await aborted.wait_for(timeout=WAIT_MS)
        abort_text = await aborted.inner_text()

        # Retry: a new approval starts the rollout again; it passes 10 %; promote sends it all the traffic.
        await page.click("#act-retry")
        await page.click("#confirm-ok")
        await (
            page.locator("#action-log li[data-label^='retry']")
            .locator(".result", has_text="rollout_started")
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#rollout-state", has_text="at 10 %").wait_for(timeout=WAIT_MS)
        await asyncio.wait_for(_canary_traffic_until_step_two(world), WAIT_MS / 1000)
        await page.locator("#rollout-state", has_text="at 50 %").wait_for(timeout=WAIT_MS)
        await page.click("#act-promote")
        await page.click("#confirm-ok")
        await (
            page.locator("#action-log li[data-label^='promote']")
            .locator(".result", has_text="rollout_succeeded")
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#champion-version", has_text="2").wait_for(timeout=WAIT_MS)

        # Roll back to a chosen version, by keyboard: the select, the button, the reason, Enter.
        await page.select_option("#rollback-version", "1")
        await page.focus("#rollback-version")
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.id")
        await page.keyboard.press("Enter")
        await page.locator("#confirm-input").fill("latency complaints")
        await page.keyboard.press("Enter")
        rolled = page.locator("#action-log li[data-label^='roll back']").locator(
            ".result", has_text="rolled_back"
        )
        await rolled.wait_for(timeout=WAIT_MS)
        rollback_text = await rolled.inner_text()
        await page.locator("#champion-version", has_text="1").wait_for(timeout=WAIT_MS)
        await page.locator("#serving .split .stable", has_text="v1 100%").wait_for(timeout=WAIT_MS)
        taken_off = page.locator("#chain li[data-kind='rollback']", has_text="rolled back to version 1")
        await taken_off.wait_for(timeout=WAIT_MS)
        # the succeeded rollout stays "succeeded"; the versions card says what came after it
        await page.locator("#rolled-back-since", has_text="from version 2 to 1").wait_for(timeout=WAIT_MS)
        await page.screenshot(path=str(ARTIFACTS / "ui-after-rollback.png"), full_page=True)

        # The chart of a past rollout: the first one, aborted at 50 %.
        first_id = str((await _rollouts(world))[-1]["id"])
        await page.select_option("#rollout-select", first_id)
        past_chart = page.locator(f"#canary-chart svg[data-rollout='{first_id}']")
        await past_chart.wait_for(timeout=WAIT_MS)
        past_heading = await past_chart.locator("text").first.inner_html()
        past_points = await past_chart.locator("circle.measurement").count()

        # Retrain needs a reason in the dialog; the resulting event is shown.
        await page.fill("#retrain-data", world.batch)
        await page.click("#act-retrain")
        await page.click("#confirm-ok")
        await page.locator("#confirm-error", has_text="required").wait_for(timeout=WAIT_MS)
        await page.fill("#confirm-input", "drift on alcohol")
        await page.click("#confirm-ok")
        retrained = page.locator("#action-log li[data-label^='retrain']").locator(
            ".result", has_text="mlcd.training.retrain_requested.v1"
        )
        await retrained.wait_for(timeout=WAIT_MS)

        # Dead letters: the reason is listed; a replay re-publishes the event and the page shows it.
        letters = page.locator("#dead-letters")
        await letters.locator("td", has_text="chat webhook answered 500").wait_for(timeout=WAIT_MS)
        await letters.locator("button[data-replay]").first.click()
        await page.click("#confirm-ok")
        await page.locator("#message", has_text="Replayed 1 dead letter").wait_for(timeout=WAIT_MS)
        await (
            page.locator("#action-log li[data-label^='replay']")
            .locator(".result", has_text=world.letter_event_id)
            .wait_for(timeout=WAIT_MS)
        )
        await page.locator("#dead-letters", has_text="No dead letter is waiting").wait_for(timeout=WAIT_MS)

        # The journal filtered by type; the audit log names who did what.
        await page.select_option("#filter-type", events.RolledBack.type)
        await page.locator("#events tbody tr").first.wait_for(timeout=WAIT_MS)
        await _until(lambda: _only_rolled_back(page), "the journal filtered to rolled_back events")
        journal_text = await page.locator("#events").inner_text()
        await page.select_option("#filter-type", "")
        await page.select_option("#filter-model", OTHER)
        await _until(lambda: _only_model(page, OTHER), f"the journal filtered to {OTHER}")
        other_text = await page.locator("#events").inner_text()
        await page.select_option("#filter-model", model)
        await _until(lambda: _only_model(page, model), f"the journal filtered to {model}")
        never_reloaded = await page.evaluate("window.loadedOnce === true")
        # The audit section renders on its own request, after or before the journal's: wait for its rows.
        await page.locator("#audit td", has_text="reject").first.wait_for(timeout=WAIT_MS)
        audit_text = await page.locator("#audit").inner_text()
        wide_at_desktop = await _overflowing(page)

        # A phone-width screen: nothing overflows its card.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_timeout(300)  # layout settles after the resize; nothing to wait on but the frame
        wide_on_phone = await _overflowing(page)
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(ARTIFACTS / "ui-phone.png"), full_page=False)
        await browser.close()

    assert chain_kinds[:6] == [
        "data_batch",
        "validation",
        "pipeline_version",
        "training_run",
        "model_version",
        "gate",
    ]
    assert chain_kinds[6:] and set(chain_kinds[6:]) == {"rollout_step"}
    assert mlflow_link is not None and mlflow_link.endswith(f"/#/models/{model}/versions/2")
    assert merge_request_link == "https://gitlab.example.com/ml/wine-quality/-/merge_requests/2"
    assert "-3.2" in batch_text and "99" in batch_text and "alcohol" in batch_text
    assert approve_gate in open_gate_text or reject_gate in open_gate_text
    assert gates_wide_at_desktop == [] and gates_wide_on_phone == []
    assert candidate == "2"
    assert decided_by == "alice via ui"
    assert "accuracy_floor" in decision_text and "0.93" in decision_text
    controls = {
        "model-select",
        "sign-out",
        "rollout-select",
        "act-promote",
        "act-resume",
        "act-abort",
        "rollback-version",
        "act-rollback",
        "retrain-data",
        "act-retrain",
        "filter-model",
        "filter-type",
        "replay-all",
        "replay",
    }
    assert controls <= reached, f"not reached by Tab: {controls - reached}"
    assert "rolled_back" in past_heading and past_points > 0
    assert "another model's event" in other_text and model not in other_text
    assert set(chart_checks) == {"request-count", "success-rate", "latency-p95"}
    assert thresholds >= 3
    assert "v2 50%" in split_text and "v1 50%" in split_text
    assert "aborted by on-call" in abort_text
    assert "to 1" in rollback_text and "latency complaints" in rollback_text
    assert focused == "act-rollback"
    assert "rolled back from version 2 to 1" in journal_text
    assert "reject" in audit_text and "approve" in audit_text and "alice" in audit_text
    assert mid_canary_wide == [] and wide_at_desktop == [] and wide_on_phone == []
    assert not [u for u in urls if TOKEN in u], "the token must never travel in a URL"
    assert not [u for u in urls if not u.startswith((world.url + "/", "data:"))], "same origin only, no CDN"
    assert never_reloaded, "every update above arrived without reloading the page"
    assert complaints == []

    rollouts = await _rollouts(world)
    first = rollouts[-1]
    assert first["state"] == "rolled_back" and first["reason"] == "aborted by on-call"
    success = [m for m in first["measurements"] if m["check"] == "success-rate" and m["passed"]]
    assert success and success[0]["min"] == pytest.approx(0.95) and success[0]["traffic_percent"] == 10


async def _only_model(page: Any, model: str) -> bool:
    models: list[str] = await page.locator("#events tbody tr td:nth-child(3)").evaluate_all(
        "cells => cells.map(c => c.textContent)"
    )
    return bool(models) and set(models) == {model}


async def _only_rolled_back(page: Any) -> bool:
    kinds: list[str] = await page.locator("#events tbody tr td:nth-child(2)").evaluate_all(
        "cells => cells.map(c => c.textContent)"
    )
    return bool(kinds) and set(kinds) == {"serving.rolled_back"}
