"""The root HTTP app: the services' routers, health, readiness, metrics, and errors mapped to 4xx.

Never a 500 for a caller's mistake: validation errors become 422/400 with the reason, MlcdError
subclasses their status; only a real fault inside mlcd answers 500, with no traceback in the body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlcd import __version__, errors, logs

log = logs.get(__name__)

Readiness = Callable[[], Awaitable[dict[str, str | None]]]

_STATUS: dict[type[errors.MlcdError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.InvalidRequest: 400,
    errors.Conflict: 409,
    errors.AdapterUnavailable: 503,
    errors.ConfigError: 400,
    errors.PermanentError: 400,
}


def status_for(error: errors.MlcdError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def create_app(routers: Sequence[APIRouter], readiness: Readiness) -> FastAPI:
    app = FastAPI(
        title="mlcd",
        version=__version__,
        description="Event-driven CI/CD for ML: webhooks in, gates, rollouts and the event journal.",
    )
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Bus, store and configured adapters are reachable",
        responses={503: {"description": "A part is unreachable; the body names it"}},
    )
    async def readyz() -> JSONResponse:
        parts = {
            name: problem and logs.without_url_credentials(problem)
            for name, problem in (await readiness()).items()
        }
        failing = {name: problem for name, problem in parts.items() if problem}
        body = {"status": "ready" if not failing else "not ready", "parts": parts}
        return JSONResponse(body, status_code=503 if failing else 200)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(errors.MlcdError)
    async def _mlcd_error(_: Request, error: errors.MlcdError) -> JSONResponse:
        status = status_for(error)
        headers = {"Retry-After": "5"} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse({"error": str(error)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _fault(_: Request, error: Exception) -> JSONResponse:
        log.error("request failed inside mlcd", error=f"{type(error).__name__}: {error}")
        return JSONResponse({"error": "internal error; see the mlcd logs"}, status_code=500)

    return app
