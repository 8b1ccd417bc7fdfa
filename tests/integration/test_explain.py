"""`mlcd explain` and `POST /api/v1/explain`: for a delivery of each source, what explain says mlcd would
emit is what the chain then journals when the same delivery arrives; nothing is written by explaining."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mlcd import auth, cli, events, explain, explain_api
from mlcd import http as mlcd_http
from mlcd.bus.memory import MemoryBus
from mlcd.config import Settings
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.ingest.app import router as ingest_router
from mlcd.local.serving import LocalServing
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import outbox
from mlcd.store.tables import outbox as outbox_table
from tests.support import webhook_credentials as credentials
from tests.support.flows import eventually
from tests.support.ingest_app import serving

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"t": auth.Identity("rita", frozenset({"developers"}))}
KEYS = credentials.WebhookSecrets.fresh()


class _NoRegistry:
    async def get_version(self, model: str, version: str) -> Any:
        raise AssertionError("not asked in these tests")

    async def version_by_alias(self, model: str, alias: str) -> None:
        return None

    async def flavors(self, version: Any) -> tuple[str, ...]:
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
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
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
