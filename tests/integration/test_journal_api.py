"""`GET /api/v1/events`: the journal over HTTP, for any valid API token, newest first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, journal_api
from mlcd.auth import Identity
from mlcd.store import database, outbox

TOKEN = "mlcd_reader_token"


def _identify(token: str | None) -> Identity | None:
    return Identity("reader", frozenset({"viewers"})) if token == TOKEN else None


def _event(model: str, minute: int, payload: events.Payload | None = None) -> events.Envelope[Any]:
    data = payload or events.RetrainRequested(model=model, reason=f"minute {minute}")
    time = datetime(2026, 11, 23, 12, minute, tzinfo=UTC)
    return events.new_event(data, source="mlcd/test", id=f"{model}-{minute}", time=time)


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with engine.begin() as conn:
        await outbox.add(
            conn,
            [
                _event("wine_quality", 1),
                _event("churn", 2),
                _event("wine_quality", 3, events.NoticeRaised(model="wine_quality", message="drift")),
            ],
            sent=True,
        )
        await outbox.add(conn, [_event("wine_quality", 4)])  # not yet published: not in the journal
    app = FastAPI()
    app.include_router(journal_api.router(lambda: engine, _identify))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mlcd") as client:
        yield client


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_journal_lists_published_events_newest_first(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events", headers=_auth())
    assert response.status_code == 200
    body = response.json()
    assert [e["id"] for e in body] == ["wine_quality-3", "churn-2", "wine_quality-1"]
    assert body[-1] == {**_event("wine_quality", 1).structured(), "time": "2026-11-23T12:01:00+00:00"}


async def test_journal_filters_by_model_type_and_limit(client: httpx.AsyncClient) -> None:
    by_model = await client.get("/api/v1/events", params={"model": "wine_quality"}, headers=_auth())
    assert [e["id"] for e in by_model.json()] == ["wine_quality-3", "wine_quality-1"]
    by_type = await client.get("/api/v1/events", params={"type": events.NoticeRaised.type}, headers=_auth())
    assert [e["id"] for e in by_type.json()] == ["wine_quality-3"]
    limited = await client.get("/api/v1/events", params={"limit": 2}, headers=_auth())
    assert [e["id"] for e in limited.json()] == ["wine_quality-3", "churn-2"]


@pytest.mark.parametrize("limit", [0, 1001])
async def test_limit_outside_1_to_1000_is_a_400_saying_so(client: httpx.AsyncClient, limit: int) -> None:
    response = await client.get("/api/v1/events", params={"limit": limit}, headers=_auth())
    assert response.status_code == 400
    assert response.json()["detail"] == f"limit must be between 1 and 1000, not {limit}"


async def test_request_without_a_token_is_refused_with_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "missing API token" in response.json()["detail"]


async def test_request_with_an_unknown_token_is_refused_with_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events", headers=_auth("mlcd_guessed"))
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown API token"


async def test_unreachable_store_answers_503_not_500() -> None:
    engine = database.create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    app = FastAPI()
    app.include_router(journal_api.router(lambda: engine, _identify))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://mlcd"
        ) as client:
            response = await client.get("/api/v1/events", headers=_auth())
    finally:
        await engine.dispose()
    assert response.status_code == 503
    assert response.json()["detail"] == "the state store is unavailable"
