"""`GET /api/v1/models/{model}/versions/{version}/lineage`: where a model version came from and where it
went, from the event journal, for any valid API token."""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

from collections.abc import Callable

from fastapi import APIRouter, Depends, Path
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import http, lineage
from mlcd.errors import NotFound
from mlcd.store import gates, outbox

# The journal rows of one model read to build a lineage: enough for thousands of versions' chains.
MAX_EVENTS = 50_000


def router(engine: Callable[[], AsyncEngine], identify: http.Identify) -> APIRouter:
    caller = http.caller(identify)
    api = APIRouter(prefix="/api/v1", tags=["lineage"])

    @api.get(
        "/models/{model}/versions/{version}/lineage",
        summary="A model version's lineage: data batch, validation, pipeline, run, gate, rollouts",
        dependencies=[Depends(caller)],
        responses={404: {"description": "No journaled event names this model version"}},
    )
    async def version_lineage(
        model: str = Path(max_length=200), version: str = Path(max_length=200)
    ) -> lineage.Lineage:
        async with engine().connect() as conn:
            rows = await outbox.journal(conn, model=model, limit=MAX_EVENTS, ascending=True)
            found = lineage.of_version([event for _, event in rows], model, version)
            if found is None:
                raise NotFound(f"no journaled event names {model} version {version}")
            gate = next((s.data["gate_id"] for s in found.steps if s.step == "gate"), None)
            audit = await gates.audit_log(conn, gate) if gate else []
        return lineage.with_decisions(found, [entry.as_dict() for entry in audit])

    return api
