"""The on-call page at /ui (HTML, script and style served from the package, no outside assets) and the model
catalogue it lists."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from fastapi import APIRouter, Depends, Header
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from mlcd import auth
from mlcd.errors import Unauthorized
from mlcd.policy.book import PolicyBook

Identify = Callable[[str | None], auth.Identity | None]

# Everything the page loads comes from here (no CDN: it must work offline in a cluster); scripts only
# from its own file, so text an event carries can never run as script.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


class CatalogEntry(BaseModel):
    model: str
    project: str | None = None
    pipeline: str | None = None


def router(policies: PolicyBook, identify: Identify) -> APIRouter:
    routes = APIRouter()
    files = resources.files("mlcd.local")
    page = files.joinpath("ui_page.html").read_text()
    script = files.joinpath("ui_page.js").read_text()
    style = files.joinpath("ui_page.css").read_text()

    def caller(authorization: str | None = Header(None)) -> auth.Identity:
        identity = identify(auth.bearer(authorization))
        if identity is None:
            raise Unauthorized("a valid API token is required (Authorization: Bearer <token>)")
        return identity

    @routes.get("/ui", response_class=HTMLResponse, tags=["ui"], summary="On-call page")
    async def ui() -> HTMLResponse:
        return HTMLResponse(page, headers=_HEADERS)

    @routes.get("/ui/page.js", response_class=Response, tags=["ui"], summary="The on-call page's script")
    async def ui_script() -> Response:
        return Response(script, media_type="text/javascript", headers=_HEADERS)

    @routes.get("/ui/page.css", response_class=Response, tags=["ui"], summary="The on-call page's style")
    async def ui_style() -> Response:
        return Response(style, media_type="text/css", headers=_HEADERS)

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
