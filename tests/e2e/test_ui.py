"""The on-call page in a real headless Chromium: sign in, read a gate's rule table, approve it."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from mlcd import bootstrap, http, journal_api
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.bus import runtime
from mlcd.deployer import app as deployer_app
from mlcd.gatekeeper import app as gatekeeper_app
from mlcd.local import ui
from mlcd.policy.book import PolicyBook
from mlcd.store import database, gates, migrate
from mlcd.store.tables import outbox
from tests.support import ingest_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
TOKEN = "mlcd_ui_test_token_alice"


@pytest.fixture
async def site(tmp_path: Path, mlflow_uri: str) -> AsyncIterator[tuple[str, object]]:
    engine = database.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mlcd.db'}")
    await migrate.upgrade(engine)
    tokens = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(yaml.safe_dump([{"name": "alice", "groups": ["oncall"], "token_sha256": digest}]))
    identify = bootstrap.Identifier(tokens)
    policies = PolicyBook(REPO / "policies")
    waker = runtime.RelayWaker()
    app = http.create_app(
        [
            ui.router(policies, identify),
            gatekeeper_app.router(engine, waker, policies, identify),
            deployer_app.router(engine, waker, MlflowRegistry(mlflow_uri), identify, policies),
            journal_api.router(lambda: engine, identify),
        ],
        readiness=_ready,
    )
    async with ingest_app.serving(app) as url:
        yield url, engine
    await engine.dispose()


async def _ready() -> dict[str, str | None]:
    return {}


async def _open_gate(engine: object) -> str:
    now = datetime.now(UTC)
    gate = gates.Gate(
        id=gates.gate_id_for("ui-test-cause"),
        model="wine_quality",
        model_version="7",
        champion_version="6",
        state="open",
        rules=[
            {
                "name": "accuracy_floor",
                "expression": "candidate.metrics.accuracy >= 0.80",
                "passed": True,
                "values": {"candidate.metrics.accuracy": 0.93},
                "error": "",
            }
        ],
        approvals_required=1,
        approver_groups=["oncall"],
        author="dana",
        project="ml/wine-quality",
        commit="4fae0b2f",
        created_at=now,
        expires_at=now + timedelta(hours=24),
        cause_event_id="ui-test-cause",
    )
    async with engine.begin() as conn:  # type: ignore[attr-defined]
        stored = await gates.open_gate(conn, gate)
    return stored.id


async def test_oncall_engineer_approves_a_gate_from_the_page(
    site: tuple[str, object], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    base, engine = site
    gate_id = await _open_gate(engine)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = await browser.new_page()
        await page.goto(f"{base}/ui")
        await page.fill("#token", TOKEN)
        await page.click("#sign-in")
        gate = page.locator(f"[data-gate='{gate_id}']")
        await gate.wait_for(timeout=15_000)
        table_text = await gate.inner_text()
        await page.locator("#models td", has_text="wine_quality").wait_for(timeout=15_000)
        await page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        await gate.locator("button.approve").click()
        await page.locator("#message", has_text="approved").wait_for(timeout=15_000)
        await browser.close()

    assert "accuracy_floor" in table_text and "pass" in table_text and "0.93" in table_text
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        decided = await gates.get(conn, gate_id)
        audit = await gates.audit_log(conn, gate_id)
        emitted = list(await conn.execute(select(outbox.c.event_type)))
    assert decided is not None and decided.state == "approved" and decided.decided_by == "alice"
    assert any(entry.via == "ui" for entry in audit)
    assert ("mlcd.promotion.approved.v1",) in [tuple(row) for row in emitted]


async def test_page_refuses_a_wrong_token(site: tuple[str, object]) -> None:
    from playwright.async_api import async_playwright

    base, _ = site
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page()
        await page.goto(f"{base}/ui")
        await page.fill("#token", "not-a-token")
        await page.click("#sign-in")
        await page.locator("#login-error", has_text="refused").wait_for(timeout=15_000)
        await browser.close()
