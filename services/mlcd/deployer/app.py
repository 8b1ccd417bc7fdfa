"""The deployer's HTTP API: a model's serving status, and the on-call's manual rollback."""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import auth, events, logs
from mlcd.bus import runtime
from mlcd.errors import MlcdError
from mlcd.policy.book import PolicyBook
from mlcd.ports import Registry
from mlcd.store import outbox, rollouts

log = logs.get(__name__)

SOURCE = "mlcd/deployer-api"
ONCALL = ["oncall"]
CHAMPION = "champion"
EVENTS_SHOWN = 20


class RollbackBody(BaseModel):
    # Bounded like a gate decision's reason; a bounded str is also checked to be text (a lone surrogate
    # escape such as \ud800 is refused with 422 instead of failing to encode the event: a 500).
    to_version: str | None = Field(
        None, max_length=200, description="Version to serve; default: the one before the current."
    )
    reason: str | None = Field(None, max_length=2000, description="Why, for the journal.")


def router(
    engine: AsyncEngine | Callable[[], AsyncEngine],
    waker: runtime.RelayWaker | None,
    registry: Registry,
    identify: Callable[[str | None], auth.Identity | None],
    policies: PolicyBook,
) -> APIRouter:
    """GET /api/v1/models[/{model}] for any valid token; POST …/rollback for on-call tokens only."""

    def store() -> AsyncEngine:
        return engine if isinstance(engine, AsyncEngine) else engine()

    def caller(authorization: Annotated[str | None, Header()] = None) -> auth.Identity:
        token = auth.bearer(authorization)
        identity = identify(token) if token else None
        if identity is None:
            raise HTTPException(401, "missing or unknown API token", {"WWW-Authenticate": "Bearer"})
        return identity

    api = APIRouter(prefix="/api/v1/models", tags=["serving"])

    @api.get("", summary="Models with rollouts, each with its latest rollout")
    async def list_models(_: Annotated[auth.Identity, Depends(caller)]) -> list[dict[str, Any]]:
        try:
            async with store().connect() as conn:
                latest = [await rollouts.latest(conn, model) for model in await rollouts.models(conn)]
        except SQLAlchemyError as e:
            raise _store_down(e) from e
        return [r.as_dict() for r in latest if r is not None]

    @api.get("/{model}", summary="Champion, candidate, the rollout and its step, the model's last events")
    async def status(model: str, _: Annotated[auth.Identity, Depends(caller)]) -> dict[str, Any]:
        try:
            async with store().connect() as conn:
                current = await rollouts.running(conn, model)
                history = await rollouts.history(conn, model)
                waiting = await rollouts.waiting(conn, model)
                journal = await outbox.journal(conn, model=model, limit=EVENTS_SHOWN)
        except SQLAlchemyError as e:
            raise _store_down(e) from e
        try:
            champion = await registry.version_by_alias(model, CHAMPION)
            champion_version: str | None = champion.version if champion else None
            registry_problem = None
        except MlcdError as e:
            champion_version, registry_problem = None, str(e)
        return {
            "model": model,
            "champion": champion_version,
            "candidate": current.version if current else (waiting.version if waiting else None),
            "rollout": current.as_dict() if current else None,
            "waiting": {"version": waiting.version, "since": waiting.received_at.isoformat()}
            if waiting
            else None,
            "last_rollout": history[0].as_dict() if history else None,
            "events": [event for _, event in journal],
            "registry_problem": registry_problem,
        }

    @api.post("/{model}/rollback", status_code=202, summary="Send all traffic back (on-call only)")
    async def rollback(
        model: str, body: RollbackBody, identity: Annotated[auth.Identity, Depends(caller)]
    ) -> dict[str, Any]:
        if not identity.in_any(ONCALL):
            raise HTTPException(403, f"{identity.name} is not on call: rollbacks need the oncall group")
        if policies.get(model) is None:
            raise HTTPException(404, f"mlcd has no policy for a model named {model!r}; nothing to roll back")
        request = events.RollbackRequested(
            model=model,
            reason=body.reason or f"manual rollback by {identity.name}",
            requested_by=identity.name,
            to_version=body.to_version,
        )
        try:
            async with runtime.unit_of_work(store(), SOURCE, waker) as uow:
                event_id = uow.emit(request)
        except SQLAlchemyError as e:
            raise _store_down(e) from e
        log.info("rollback requested", model=model, by=identity.name, to_version=body.to_version)
        return {"event_id": event_id, "model": model, "to_version": body.to_version, "reason": request.reason}

    return api


def _store_down(e: Exception) -> HTTPException:
    log.warning("state store unavailable", error=str(e))
    return HTTPException(503, "the state store is unavailable", {"Retry-After": "5"})
