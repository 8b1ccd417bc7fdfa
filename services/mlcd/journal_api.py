"""`GET /api/v1/events`: the event journal over HTTP, newest first, for any valid API token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, logs
from mlcd.store import outbox

log = logs.get(__name__)

MAX_LIMIT = 1000


def router(
    engine_provider: Callable[[], AsyncEngine],
    identify: Callable[[str | None], auth.Identity | None],
) -> APIRouter:
    """The journal routes; `identify` maps a bearer token to its identity (None: not a valid token)."""

    def caller(authorization: Annotated[str | None, Header()] = None) -> auth.Identity:
        token = auth.bearer(authorization)
        if token is None:
            raise HTTPException(401, "missing API token: send Authorization: Bearer <token>", _CHALLENGE)
        identity = identify(token)
        if identity is None:
            raise HTTPException(401, "unknown API token", _CHALLENGE)
        return identity

    api = APIRouter(prefix="/api/v1", tags=["events"])

    @api.get(
        "/events",
        summary="Journaled events, newest first, as structured CloudEvents",
        dependencies=[Depends(caller)],
    )
    async def list_events(
        model: Annotated[str | None, Query(description="Only events about this model")] = None,
        event_type: Annotated[str | None, Query(alias="type", description="Only this event type")] = None,
        limit: Annotated[int, Query(description=f"How many, 1 to {MAX_LIMIT}")] = 100,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_LIMIT:
            raise HTTPException(400, f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        try:
            async with engine_provider().connect() as conn:
                rows = await outbox.journal(conn, model=model, event_type=event_type, limit=limit)
        except (SQLAlchemyError, OSError) as e:
            log.warning("journal query failed", error=str(e))
            raise HTTPException(503, "the state store is unavailable", {"Retry-After": "5"}) from e
        return [event for _, event in rows]

    return api


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
