"""Domain metrics on `/metrics`, per model, from rows the store's own repositories wrote, on SQLite and
PostgreSQL: gates waiting, rollouts by outcome, change-failure ratio, training duration, data to champion;
and a scrape that answers at once while the store does not."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import domain_metrics, events
from mlcd import http as mlcd_http
from mlcd.store import gates, outbox, rollouts, training

URI = "s3://landing/{model}/batch-{n}.csv"


async def _no_problems() -> dict[str, str | None]:
    return {}


@pytest.fixture
async def scrape() -> AsyncIterator[httpx.AsyncClient]:
    app = mlcd_http.create_app([], _no_problems)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mlcd") as client:
        yield client


async def _samples(client: httpx.AsyncClient, model: str | None = None) -> dict[tuple[str, str], float]:
    """(metric name, the label other than `model`) → value, for one model's series (or unlabelled ones)."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(answer.text):
        if not family.name.startswith(("mlcd_gate", "mlcd_rollouts", "mlcd_change", "mlcd_training_r",
                                       "mlcd_training_last", "mlcd_data_to", "mlcd_domain")):  # fmt: skip
            continue
        for sample in family.samples:
            labels = dict(sample.labels)
            if labels.pop("model", None) != model:
                continue
            found[sample.name, ",".join(labels.values())] = sample.value
    return found


def _gate(model: str, version: str, created: datetime) -> gates.Gate:
    return gates.Gate(
        id=gates.gate_id_for(f"{model}/{version}"),
        model=model,
        model_version=version,
        champion_version=None,
        state="open",
        rules=[],
        approvals_required=1,
        approver_groups=["oncall"],
        author="alice",
        project="ml/churn",
        commit="",
        created_at=created,
        expires_at=created + timedelta(hours=24),
        cause_event_id=f"cause-{model}-{version}",
    )


async def _rollout(conn: object, model: str, version: str, end: str | None, *, abort: bool = False) -> None:
    started = await rollouts.start(
        conn,  # type: ignore[arg-type]
        model=model,
        version=version,
        artifact_uri=f"models:/{model}/{version}",
        previous_version="0",
        previous_artifact_uri=f"models:/{model}/0",
        steps=[10, 50, 100],
        next_analysis_at=None,
        cause_event_id=f"approved-{model}-{version}",
        correlation_id=f"chain-{model}-{version}",
    )
    if abort:
        await rollouts.request(conn, started, "abort", datetime.now(UTC))  # type: ignore[arg-type]
    if end is not None:
        await rollouts.finish(conn, started, end)  # type: ignore[arg-type]


async def _trained(
    conn: object, model: str, name: str, data_uri: str, took: timedelta, *, version: str | None
) -> None:
    trigger = training.Trigger(model=model, event_id=f"data-{name}", data_uri=data_uri, reason="data arrived")
    run = training.intended_run(name, trigger, "wine_quality", timedelta(minutes=1))
    await training.record_intent(conn, dataclasses.replace(run, started_at=datetime.now(UTC) - took))  # type: ignore[arg-type]
    await training.record_submitted(conn, name, f"kfp-{name}", "v1", datetime.now(UTC))  # type: ignore[arg-type]
    if version is None:
        await training.record_finished(conn, name, "FAILED", "step train failed")  # type: ignore[arg-type]
    else:
        await training.record_finished(conn, name, "SUCCEEDED", "", version)  # type: ignore[arg-type]


async def _arrived(conn: object, model: str, uri: str, at: datetime) -> None:
    data = events.DataArrived(model=model, bucket="landing", key=uri.rsplit("/", 1)[-1], uri=uri, size=10)
    await outbox.add(conn, [events.new_event(data, source="mlcd/ingest", time=at)], sent=True)  # type: ignore[arg-type]


async def _history(engine: AsyncEngine, model: str) -> None:
    """Two open gates (the older 300 s old), one approved; rollouts that ended each way and one running;
    the champion (version 5) trained for 600 s on a batch that arrived 900 s ago; a failed run."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await gates.open_gate(conn, _gate(model, "7", now - timedelta(seconds=300)))
        await gates.open_gate(conn, _gate(model, "8", now - timedelta(seconds=60)))
        decided = await gates.open_gate(conn, _gate(model, "6", now - timedelta(seconds=900)))
        await gates.finish(conn, decided.id, "approved", "olivia", "", now)
        await _arrived(conn, model, URI.format(model=model, n=1), now - timedelta(seconds=900))
        await _arrived(conn, model, URI.format(model=model, n=2), now - timedelta(seconds=700))
        await _trained(conn, model, f"{model}-run-1", URI.format(model=model, n=1), timedelta(seconds=600),
                       version="5")  # fmt: skip
        await _trained(conn, model, f"{model}-run-2", URI.format(model=model, n=2), timedelta(seconds=90),
                       version=None)  # fmt: skip
        await _rollout(conn, model, "2", rollouts.ROLLED_BACK)
        await _rollout(conn, model, "3", rollouts.ROLLED_BACK, abort=True)
        await _rollout(conn, model, "4", rollouts.SUPERSEDED)
        await _rollout(conn, model, "5", rollouts.SUCCEEDED)
        await _rollout(conn, model, "9", None)


async def test_metrics_report_each_models_gates_rollouts_training_and_lead_time(
    engine: AsyncEngine, scrape: httpx.AsyncClient
) -> None:
    model, quiet = f"churn_{uuid.uuid4().hex[:8]}", f"fraud_{uuid.uuid4().hex[:8]}"
    await _history(engine, model)
    async with engine.begin() as conn:
        await _rollout(conn, quiet, "1", rollouts.SUCCEEDED)

    assert await domain_metrics.Refresher(engine).refresh()
    seen = await _samples(scrape, model)

    assert seen["mlcd_gates", "open"] == 2
    assert seen["mlcd_gates", "approved"] == 1
    assert seen["mlcd_gates", "expired"] == 0
    assert 300 <= seen["mlcd_gate_oldest_open_age_seconds", ""] < 330
    assert seen["mlcd_rollouts", "succeeded"] == 1
    assert seen["mlcd_rollouts", "rolled_back"] == 1
    assert seen["mlcd_rollouts", "aborted"] == 1
    assert seen["mlcd_rollouts", "superseded"] == 1
    assert seen["mlcd_rollouts", "running"] == 1
    assert seen["mlcd_change_failure_ratio", ""] == pytest.approx(2 / 3)
    assert seen["mlcd_training_runs", "succeeded"] == 1
    assert seen["mlcd_training_runs", "failed"] == 1
    assert 90 <= seen["mlcd_training_last_duration_seconds", ""] < 120  # the failed run ended last
    assert 900 <= seen["mlcd_data_to_champion_seconds", ""] < 930  # batch 1, not the newer batch 2
    other = await _samples(scrape, quiet)
    assert other["mlcd_gates", "open"] == 0
    assert other["mlcd_gate_oldest_open_age_seconds", ""] == 0
    assert other["mlcd_change_failure_ratio", ""] == 0
    assert ("mlcd_data_to_champion_seconds", "") not in other  # no training run made its champion
    assert (await _samples(scrape))["mlcd_domain_figures_up", ""] == 1


async def test_a_decided_gate_leaves_the_open_count_and_the_wait(
    engine: AsyncEngine, scrape: httpx.AsyncClient
) -> None:
    model = f"churn_{uuid.uuid4().hex[:8]}"
    refresher = domain_metrics.Refresher(engine)
    async with engine.begin() as conn:
        waiting = await gates.open_gate(conn, _gate(model, "3", datetime.now(UTC) - timedelta(seconds=120)))
    await refresher.refresh()
    assert (await _samples(scrape, model))["mlcd_gates", "open"] == 1

    async with engine.begin() as conn:
        await gates.finish(conn, waiting.id, "rejected", "olivia", "noise", datetime.now(UTC))
    await refresher.refresh()
    seen = await _samples(scrape, model)

    assert seen["mlcd_gates", "open"] == 0
    assert seen["mlcd_gates", "rejected"] == 1
    assert seen["mlcd_gate_oldest_open_age_seconds", ""] == 0


async def test_a_scrape_answers_at_once_while_the_store_hangs(
    engine: AsyncEngine, scrape: httpx.AsyncClient, store_url: str
) -> None:
    model = f"churn_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await gates.open_gate(conn, _gate(model, "3", datetime.now(UTC) - timedelta(seconds=60)))
    refresher = domain_metrics.Refresher(engine, timeout_s=0.5)
    assert await refresher.refresh()

    async with _store_held(engine, store_url):
        started = time.monotonic()
        read = asyncio.create_task(refresher.refresh())
        answered = await _samples(scrape, model)
        scrape_s = time.monotonic() - started
        assert not await read
        refresh_s = time.monotonic() - started

    assert scrape_s < 0.5
    assert refresh_s < 5
    assert answered["mlcd_gates", "open"] == 1  # the last answer, kept
    assert (await _samples(scrape))["mlcd_domain_figures_up", ""] == 0
    stale = domain_metrics.DomainCollector(max_age_s=0.0)
    stale.snapshot = refresher.collector.snapshot
    assert not [m for m in stale.collect() if m.name == "mlcd_gates"]  # too old: not served at all


class _store_held:
    """Another client holds the store so that reads wait: SQLite's write lock (every mlcd transaction
    begins IMMEDIATE), PostgreSQL's ACCESS EXCLUSIVE lock on the gates table."""

    def __init__(self, engine: AsyncEngine, store_url: str) -> None:
        self.engine = engine
        self.store_url = store_url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: object = None

    async def __aenter__(self) -> None:
        if self.store_url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(self.store_url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
            return
        self._pg = conn = await self.engine.connect()
        await conn.execute(text("LOCK TABLE gates IN ACCESS EXCLUSIVE MODE"))

    async def __aexit__(self, *_: object) -> None:
        if self._sqlite is not None:
            self._sqlite.rollback()
            self._sqlite.close()
        elif self._pg is not None:
            await self._pg.rollback()  # type: ignore[attr-defined]
            await self._pg.close()  # type: ignore[attr-defined]
