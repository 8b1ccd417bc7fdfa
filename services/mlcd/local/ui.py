"""The on-call page at /ui and the model catalogue it lists (self-contained HTML, no outside assets)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from fastapi import APIRouter, Depends, Header
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from mlcd import auth
from mlcd.errors import Unauthorized
from mlcd.policy.book import PolicyBook

Identify = Callable[[str | None], auth.Identity | None]


class CatalogEntry(BaseModel):
    model: str
    project: str | None = None
    pipeline: str | None = None


def router(policies: PolicyBook, identify: Identify) -> APIRouter:
    routes = APIRouter()
    page = resources.files("mlcd.local").joinpath("ui_page.html").read_text()

    def caller(authorization: str | None = Header(None)) -> auth.Identity:
        identity = identify(auth.bearer(authorization))
        if identity is None:
            raise Unauthorized("a valid API token is required (Authorization: Bearer <token>)")
        return identity

    @routes.get("/ui", response_class=HTMLResponse, tags=["ui"], summary="On-call page")
    async def ui() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'"})

    @routes.get("/api/v1/policies", tags=["policies"], summary="Models mlcd has a policy for")
    async def catalog(_: auth.Identity = Depends(caller)) -> list[CatalogEntry]:
        return [
            CatalogEntry(
                model=p.model,
                project=p.code.project if p.code else None,
                pipeline=p.training.pipeline if p.training else None,
            )
            for p in sorted(policies.all(), key=lambda p: p.model)
        ]

    return routes
