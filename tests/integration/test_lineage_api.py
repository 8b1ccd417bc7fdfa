"""`GET /api/v1/models/{model}/versions/{version}/lineage` and `mlcd lineage`: a version's chain, from the
event journal on both stores; links the journal does not hold are named, never invented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, http, lineage, lineage_api
from mlcd.auth import Identity
from mlcd.store import gates, outbox

TOKEN = "mlcd_reader_token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "wine_quality"
URI = "s3://landing/wine_quality/batch-07.csv"
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def _identify(token: str | None) -> Identity | None:
    return Identity("reader", frozenset({"viewers"})) if token == TOKEN else None


def _chain() -> list[events.Envelope[Any]]:
    """One version's whole chain as the services journal it, with another model's events between."""
    payloads: list[events.Payload] = [
        events.DataArrived(
            model=MODEL,
            bucket="landing",
            key="wine_quality/batch-07.csv",
            uri=URI,
            size=2048,
            etag="9b2cf535f27731c974343645a3985328",
            author="minio-uploader",
        ),
        events.RetrainRequested(model="churn", reason="another model's event"),
        events.DataValidated(model=MODEL, uri=URI, rows=1599, suite="wine", result_uri=f"{URI}.json"),
        events.PipelinePublished(
            model=MODEL,
            pipeline="wine_quality",
            version="wq-abc123",
            commit="abc123" * 6,
            package_uri="s3://pipelines/wq.yaml",
            author="alice",
        ),
        events.TrainingStarted(
            model=MODEL,
            run_id="run-1",
            run_name="wq-run-1",
            pipeline_version="wq-abc123",
            data_uri=URI,
            trigger_event_id="e0",
        ),
        events.TrainingSucceeded(
            model=MODEL,
            run_id="run-1",
            model_version="7",
            metrics={"accuracy": 0.91},
            data_uri=URI,
            pipeline_version="wq-abc123",
            author="alice",
        ),
        events.GateOpened(
            model=MODEL,
            gate_id="g-7",
            model_version="7",
            champion_version="6",
            rules=[],
            approvals_required=1,
            approver_groups=["oncall"],
            expires_at=START,
            author="alice",
        ),
        events.RetrainRequested(model="churn", reason="keeps the ids below as they were"),
        events.PromotionApproved(model=MODEL, model_version="7", gate_id="g-7", approved_by=["bob"]),
        events.RolloutStarted(model=MODEL, model_version="7", previous_version="6", steps=[10, 100]),
        events.RolloutStepCompleted(
            model=MODEL, model_version="7", traffic_percent=10, analysis={"success-rate": 0.99}
        ),
        events.RolloutSucceeded(model=MODEL, model_version="7", previous_version="6"),
        events.RolledBack(model=MODEL, from_version="7", to_version="6", reason="drift alert"),
    ]
    chains_of_their_own = {
        1,
        3,
        7,
        12,
    }  # another model's events, the push of the pipeline, the drift rollback
    return [
        events.new_event(
            p,
            source="mlcd/test",
            id=f"e{i}",
            time=START + timedelta(minutes=i),
            correlationid=None if i in chains_of_their_own else "e0",  # the batch's arrival began the chain
        )
        for i, p in enumerate(payloads)
    ]


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with engine.begin() as conn:
        await outbox.add(conn, _chain(), sent=True)
        # the gate's audit, as the gatekeeper writes it for every surface: a refused self-approval, then bob's
        refusal = "alice is the author of the change and may not approve it"
        await gates.audit(
            conn, "g-7", actor="alice", via="ui", action="approve", outcome="refused", reason=refusal
        )
        await gates.audit(conn, "g-7", actor="bob", via="cli", action="approve", outcome="accepted")

    async def ready() -> dict[str, str | None]:
        return {}

    app: FastAPI = http.create_app([lineage_api.router(lambda: engine, _identify)], ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mlcd") as client:
        yield client


async def test_a_versions_lineage_is_its_chain_in_order(client: httpx.AsyncClient) -> None:
    answer = await client.get(f"/api/v1/models/{MODEL}/versions/7/lineage", headers=AUTH)
    assert answer.status_code == 200, answer.text
    found = lineage.Lineage.model_validate(answer.json())
    audited = ["g-7/audit/1", "g-7/audit/2"]
    assert [s.id for s in found.steps] == [
        "e0",
        "e2",
        "e3",
        "e4",
        "e5",
        "e6",
        *audited,
        "e8",
        "e9",
        "e10",
        "e11",
        "e12",
    ]
    assert found.missing == []
    printed = "\n".join(lineage.render(found))
    assert "etag 9b2cf535f27731c974343645a3985328) by minio-uploader" in printed
    refused = "alice → approve via ui: refused (alice is the author of the change and may not approve it)"
    assert refused in printed
    assert "bob → approve via cli: accepted" in printed
    assert "rolled back away from this version (7 → 6): drift alert" in printed
    assert found.correlation == "e0" and printed.startswith(f"{MODEL} version 7, chain e0\n")
    assert [line for line in printed.splitlines() if "[chain " in line] == [
        line for line in printed.splitlines() if line.endswith(("[chain e3]", "[chain e12]"))
    ]
    assert printed.count("[chain ") == 2  # the pipeline's push and the drift rollback; the rest is e0's chain


async def test_a_version_trained_before_the_journal_shows_what_is_left_and_what_is_missing(
    client: httpx.AsyncClient,
) -> None:
    """Version 6 was trained before the journal began: only the rollback back to it is there, and the
    missing model version is named rather than invented."""
    answer = await client.get(f"/api/v1/models/{MODEL}/versions/6/lineage", headers=AUTH)
    assert answer.status_code == 200, answer.text
    found = lineage.Lineage.model_validate(answer.json())
    assert [(s.id, s.step) for s in found.steps] == [("e12", "rollback")] and found.missing == [
        "model version"
    ]
    assert "rolled back to this version (7 → 6)" in found.steps[0].summary


async def test_unknown_versions_and_callers_are_refused_with_a_reason(client: httpx.AsyncClient) -> None:
    unknown = await client.get(f"/api/v1/models/{MODEL}/versions/99/lineage", headers=AUTH)
    assert unknown.status_code == 404 and "version 99" in unknown.text
    anonymous = await client.get(f"/api/v1/models/{MODEL}/versions/7/lineage")
    assert anonymous.status_code == 401


def test_links_the_journal_no_longer_holds_are_named() -> None:
    journal = [e.structured() for e in _chain() if e.id not in {"e0", "e2"}]  # batch and validation expired
    found = lineage.of_version(journal, MODEL, "7")
    assert found is not None and found.missing == ["data batch", "validation"]
    assert "not in the journal: data batch, validation" in lineage.render(found)[-1]
