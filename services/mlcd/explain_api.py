"""`POST /api/v1/explain`: what mlcd will do with a delivery or CloudEvent, for any valid API token.

Reads only: the policies, the registry's champion and the version's flavors, open gates and the debounce
window. Given the serving port, the gatekeeper's `servable` check is run too.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` dependency in the
# route signatures at definition time.

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import explain, http
from mlcd.policy.book import PolicyBook
from mlcd.ports import Registry, Serving


def router(
    engine: Callable[[], AsyncEngine],
    registry: Registry,
    policies: PolicyBook,
    identify: http.Identify,
    serving: Serving | None = None,
) -> APIRouter:
    caller = http.caller(identify)
    api = APIRouter(prefix="/api/v1", tags=["explain"])

    @api.post(
        "/explain",
        summary="What mlcd will do with a webhook delivery ({source, headers, body}) or a CloudEvent",
        dependencies=[Depends(caller)],
        responses={400: {"description": "Neither a delivery nor a CloudEvent mlcd knows"}},
    )
    async def explain_event(
        given: dict[str, Any] = Body(..., description="A CloudEvent, or {source, headers, body}"),
    ) -> dict[str, Any]:
        parsed = explain.read_input(json.dumps(given).encode())
        found = await explain.explain(parsed, policies, registry, engine(), serving)
        return found.as_dict()

    return api
