"""The journal and the dead letters over HTTP: `GET /api/v1/events` (newest first), its Server-Sent
Events stream, `GET /api/v1/dead-letters` for any valid token, and their replay for admins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, http, journal_api
from mlcd.auth import Identity
from mlcd.store import database, dead_letters, notices, outbox

TOKEN = "mlcd_reader_token"
ADMIN_TOKEN = "mlcd_admin_token"


def _identify(token: str | None) -> Identity | None:
    if token == ADMIN_TOKEN:
        return Identity("root", frozenset({"admin"}))
    return Identity("reader", frozenset({"viewers"})) if token == TOKEN else None


def _app(engine: AsyncEngine) -> FastAPI:
    async def ready() -> dict[str, str | None]:
        return {}

    return http.create_app([journal_api.router(lambda: engine, _identify)], ready)


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
    transport = httpx.ASGITransport(app=_app(engine))
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
    assert response.json()["error"] == f"limit must be between 1 and 1000, not {limit}"


async def test_request_without_a_token_is_refused_with_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "missing API token" in response.json()["error"]


async def test_request_with_an_unknown_token_is_refused_with_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events", headers=_auth("mlcd_guessed"))
    assert response.status_code == 401
    assert response.json()["error"] == "unknown API token"


async def test_unreachable_store_answers_503_not_500() -> None:
    engine = database.create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_app(engine)), base_url="http://mlcd"
        ) as client:
            answers = [
                await client.get(path, headers=_auth())
                for path in ("/api/v1/events", "/api/v1/events/stream", "/api/v1/dead-letters")
            ]
            answers.append(
                await client.post("/api/v1/dead-letters/replay", json={}, headers=_auth(ADMIN_TOKEN))
            )
    finally:
        await engine.dispose()
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert response.json()["error"] == http.STORE_DOWN


async def _park_two(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for minute in (1, 2):
            record = events.encode(_event("wine_quality", minute))
            await dead_letters.park(conn, "mlcd-trainer", record, "AdapterUnavailable: KFP did not answer", 5)


async def test_dead_letters_are_listed_for_any_token_and_replayed_for_admins_only(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await _park_two(engine)
    listed = await client.get("/api/v1/dead-letters", headers=_auth())
    assert listed.status_code == 200
    assert [d["event_id"] for d in listed.json()] == ["wine_quality-2", "wine_quality-1"]
    first = listed.json()[1]["id"]

    refused = await client.post("/api/v1/dead-letters/replay", json={"ids": [first]}, headers=_auth())
    assert refused.status_code == 403 and "admin" in refused.json()["error"]
    async with engine.connect() as conn:
        assert [p.record.header("ce_id") for p in await outbox.unsent(conn, 10)] == ["wine_quality-4"]

    replayed = await client.post(
        "/api/v1/dead-letters/replay", json={"ids": [first]}, headers=_auth(ADMIN_TOKEN)
    )
    assert replayed.json() == {"replayed": 1, "requested": 1}
    async with engine.connect() as conn:
        pending = [p.record for p in await outbox.unsent(conn, 10)]
    assert [(r.topic, r.header("ce_id")) for r in pending][-1] == ("mlcd.training", "wine_quality-1")
    again = await client.post(
        "/api/v1/dead-letters/replay", json={"ids": [first]}, headers=_auth(ADMIN_TOKEN)
    )
    assert again.json() == {"replayed": 0, "requested": 1}
    waiting = await client.get("/api/v1/dead-letters", headers=_auth())
    assert [d["event_id"] for d in waiting.json()] == ["wine_quality-2"]
    everything = await client.get("/api/v1/dead-letters", params={"all": "true"}, headers=_auth())
    assert [d["replayed_at"] is not None for d in everything.json()] == [False, True]


async def test_notices_are_listed_for_any_token_newest_first(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        for n in (1, 2):
            await notices.record(
                conn,
                event_id=f"e{n}",
                model="wine_quality",
                kind="notice",
                channels=["log"],
                message={"title": f"notice {n}", "what": "drift"},
            )
    assert (await client.get("/api/v1/notices")).status_code == 401
    listed = await client.get("/api/v1/notices", params={"model": "wine_quality"}, headers=_auth())
    assert listed.status_code == 200
    assert {(n["event_id"], n["state"], n["message"]["title"]) for n in listed.json()} == {
        ("e1", "pending", "notice 1"),
        ("e2", "pending", "notice 2"),
    }
