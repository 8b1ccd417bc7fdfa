"""What the on-call page reads (services/mlcd/oncall_api.py) on both stores: the chain of a version with each
node's state, time and link out (MinIO object, GitLab commit, KFP run, MLflow version, merge request), the
rollouts with their measurements, past and current, each one's chart, and the audit log by model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, http, oncall_api
from mlcd.auth import Identity
from mlcd.policy.book import PolicyBook
from mlcd.store import gates, outbox, rollouts

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mlcd_reader_token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "wine_quality"  # policies/wine_quality.yaml names its code project ml/wine-quality
URI = "s3://landing/wine_quality/batch 07#a.csv"
COMMIT = "4fae0b2f9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
MR = "https://gitlab.example.com/ml/wine-quality/-/merge_requests/12"
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
LINKS = oncall_api.Links.of(
    "http://mlflow.example.com:5000",
    "https://kfp.example.com/pipeline",
    "https://gitlab.example.com",
    "https://reader:secret@minio.example.com:9000/",
)


def _identify(token: str | None) -> Identity | None:
    return Identity("reader", frozenset({"viewers"})) if token == TOKEN else None


def _journal() -> list[events.Envelope[Any]]:
    payloads: list[events.Payload] = [
        events.DataArrived(
            model=MODEL, bucket="landing", key="wine_quality/batch 07#a.csv", uri=URI, size=2048
        ),
        events.DataValidated(model=MODEL, uri=URI, rows=1599, suite="wine", result_uri=""),
        events.PipelinePublished(
            model=MODEL, pipeline="wine_quality", version="wq-4fae0b2f", commit=COMMIT, package_uri="s3://p/w"
        ),
        events.TrainingStarted(
            model=MODEL,
            run_id="run-1",
            run_name="wq-run-1",
            pipeline_version="wq-4fae0b2f",
            data_uri=URI,
            trigger_event_id="e0",
        ),
        events.TrainingSucceeded(
            model=MODEL,
            run_id="run-1",
            model_version="7",
            metrics={"accuracy": 0.91},
            data_uri=URI,
            pipeline_version="wq-4fae0b2f",
            commit=COMMIT,
        ),
    ]
    return [
        events.new_event(p, source="mlcd/test", id=f"e{i}", time=START + timedelta(minutes=i))
        for i, p in enumerate(payloads)
    ]


def _gate(version: str, state: str, decided_by: str | None) -> gates.Gate:
    return gates.Gate(
        id=f"g-{version}",
        model=MODEL,
        model_version=version,
        champion_version="6",
        state=state,
        rules=[],
        approvals_required=1,
        approver_groups=["oncall"],
        author="dana",
        project="ml/wine-quality",
        commit=COMMIT,
        created_at=START + timedelta(minutes=6),
        expires_at=START + timedelta(days=1),
        cause_event_id=f"cause-{version}",
        decided_at=START + timedelta(minutes=7) if decided_by else None,
        decided_by=decided_by,
        merge_request_url=MR,
    )


async def _rollout(engine: AsyncEngine, version: str, end: str | None) -> int:
    """A rollout of `version` over 6 with one analysis at its first step; `end` finishes it."""
    async with engine.begin() as conn:
        started = await rollouts.start(
            conn,
            model=MODEL,
            version=version,
            artifact_uri=f"s3://models/{version}",
            previous_version="6",
            previous_artifact_uri="s3://models/6",
            steps=[10, 50, 100],
            next_analysis_at=None,
            cause_event_id=f"approved-{version}",
            correlation_id="e0",
        )
        ok = 0.99 if end is None else 0.90
        taken = [rollouts.Measurement("success-rate", ok, ok >= 0.95, min=0.95)]
        await rollouts.measured(conn, started, taken)
        if end is not None:
            await rollouts.finish(conn, started, end, reason="success-rate 0.9 below 0.95")
    return started.id


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine]]:
    async with engine.begin() as conn:
        await outbox.add(conn, _journal(), sent=True)
        await gates.open_gate(conn, _gate("7", "approved", "bob"))
        await gates.open_gate(conn, _gate("5", "rejected", "alice"))
        await gates.audit(conn, "g-7", actor="bob", via="ui", action="approve", outcome="accepted")

    async def ready() -> dict[str, str | None]:
        return {}

    router = oncall_api.router(lambda: engine, _identify, PolicyBook(REPO / "policies"), LINKS)
    app: FastAPI = http.create_app([router], ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mlcd") as client:
        yield client, engine


async def test_each_chain_node_has_its_state_time_and_link_out(
    client: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    api, engine = client
    await _rollout(engine, "7", None)
    answer = await api.get(f"/api/v1/models/{MODEL}/chain", headers=AUTH)
    assert answer.status_code == 200, answer.text
    chain = answer.json()
    nodes = {n["kind"]: n for n in chain["nodes"] if n["kind"] != "rollout_step"}
    assert chain["version"] == "7"
    assert list(nodes) == [
        "data_batch",
        "validation",
        "pipeline_version",
        "training_run",
        "model_version",
        "gate",
    ]
    assert {kind: n["link"] for kind, n in nodes.items()} == {
        # the object on MinIO's S3 endpoint, path-style, the key escaped, the endpoint's credentials dropped
        "data_batch": "https://minio.example.com:9000/landing/wine_quality/batch%2007%23a.csv",
        "validation": None,
        "pipeline_version": f"https://gitlab.example.com/ml/wine-quality/-/commit/{COMMIT}",
        "training_run": "https://kfp.example.com/pipeline/#/runs/details/run-1",
        "model_version": f"http://mlflow.example.com:5000/#/models/{MODEL}/versions/7",
        "gate": MR,
    }
    assert [n["state"] for n in nodes.values()] == [
        "arrived",
        "passed",
        "published",
        "succeeded",
        "registered",
        "approved",
    ]
    assert all(n["time"] for n in nodes.values()), nodes
    assert nodes["gate"]["detail"] == "approved by bob"
    steps = [(n["label"], n["state"]) for n in chain["nodes"] if n["kind"] == "rollout_step"]
    assert steps == [
        ("10% to version 7", "running"),
        ("50% to version 7", "pending"),
        ("100% to version 7", "pending"),
    ]


async def test_a_version_trained_on_an_overwritten_key_shows_the_upload_it_was_pinned_to(
    client: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    """The same key uploaded twice: the chain names the upload the run read (its ETag), as the lineage
    does, not the newest one."""
    api, engine = client
    uri = "s3://landing/wine_quality/batch-08.csv"
    key = "wine_quality/batch-08.csv"
    payloads: list[events.Payload] = [
        events.DataArrived(model=MODEL, bucket="landing", key=key, uri=uri, size=100, etag="first"),
        events.DataValidated(model=MODEL, uri=uri, rows=10, suite="wine", result_uri="", etag="first"),
        events.DataArrived(model=MODEL, bucket="landing", key=key, uri=uri, size=200, etag="second"),
        events.DataValidated(model=MODEL, uri=uri, rows=20, suite="wine", result_uri="", etag="second"),
        events.TrainingStarted(
            model=MODEL,
            run_id="run-8",
            run_name="wq-run-8",
            pipeline_version="wq-4fae0b2f",
            data_uri=uri,
            trigger_event_id="e0",
            data_etag="first",
        ),
        events.TrainingSucceeded(
            model=MODEL, run_id="run-8", model_version="8", metrics={"accuracy": 0.9}, data_uri=uri
        ),
    ]
    async with engine.begin() as conn:
        later = START + timedelta(hours=1)
        await outbox.add(
            conn,
            [
                events.new_event(p, source="mlcd/test", id=f"p{i}", time=later + timedelta(minutes=i))
                for i, p in enumerate(payloads)
            ],
            sent=True,
        )

    answer = await api.get(f"/api/v1/models/{MODEL}/chain", params={"version": "8"}, headers=AUTH)

    assert answer.status_code == 200, answer.text
    nodes = {n["kind"]: n for n in answer.json()["nodes"]}
    assert nodes["data_batch"]["detail"] == "100 bytes"
    assert nodes["validation"]["detail"] == "10 rows"
    assert nodes["pipeline_version"]["state"] == "published", "named by the run's start, not its success"


async def test_past_and_current_rollouts_each_have_their_measurements_and_chart(
    client: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    api, engine = client
    past = await _rollout(engine, "5", rollouts.ROLLED_BACK)
    current = await _rollout(engine, "7", None)
    answer = await api.get(f"/api/v1/models/{MODEL}/rollouts", headers=AUTH)
    assert answer.status_code == 200, answer.text
    listed = answer.json()
    assert [(r["id"], r["state"]) for r in listed] == [(current, "running"), (past, "rolled_back")]
    assert [[(m["check"], m["value"], m["passed"], m["min"]) for m in r["measurements"]] for r in listed] == [
        [("success-rate", 0.99, True, 0.95)],
        [("success-rate", 0.90, False, 0.95)],
    ]
    assert all(r["measured"]["count"] == 1 and r["measured"]["last_at"] for r in listed)
    for rollout_id, verdict in ((past, "fail"), (current, "pass")):
        chart = await api.get(f"/api/v1/models/{MODEL}/rollouts/{rollout_id}/chart", headers=AUTH)
        assert chart.status_code == 200 and chart.headers["content-type"] == "image/svg+xml"
        root = ET.fromstring(chart.text)
        assert root.get("data-rollout") == str(rollout_id)
        circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
        assert [c.get("class") for c in circles] == [f"measurement {verdict}"]
    other = await api.get(f"/api/v1/models/{MODEL}/rollouts/{current + 100}/chart", headers=AUTH)
    assert other.status_code == 404


async def test_the_audit_log_filters_by_model_and_reading_needs_a_token(
    client: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    api, _ = client
    answer = await api.get("/api/v1/audit", params={"model": MODEL}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert [(a["gate_id"], a["actor"], a["via"], a["outcome"]) for a in answer.json()] == [
        ("g-7", "bob", "ui", "accepted")
    ]
    assert (await api.get("/api/v1/audit", params={"model": "churn"}, headers=AUTH)).json() == []
    for path in ("/api/v1/audit", f"/api/v1/models/{MODEL}/chain", f"/api/v1/models/{MODEL}/rollouts"):
        assert (await api.get(path)).status_code == 401
