"""The one HTTP boundary: the root app, the caller dependency every API route uses, and errors mapped once.

Never a 500 for a caller's mistake: validation errors become 422/400 with the reason, MlcdError
subclasses their status, a state store that does not answer 503 with Retry-After; only a real fault
inside mlcd answers 500, with no traceback in the body. Every error body is `{"error": "<reason>"}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlcd import __version__, auth, errors, logs

log = logs.get(__name__)

Readiness = Callable[[], Awaitable[dict[str, str | None]]]
Identify = Callable[[str | None], auth.Identity | None]
Surface = Literal["cli", "api", "ui"]
RETRY_AFTER_S = 5
STORE_DOWN = "the state store is unavailable; retry shortly"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    """Who calls the API (from their bearer token) and through which surface (`X-Mlcd-Via`)."""

    identity: auth.Identity
    via: Surface

    @property
    def name(self) -> str:
        return self.identity.name

    def require(self, groups: Sequence[str], what: str) -> None:
        """Forbidden (403) unless the caller is in one of `groups` (or admin)."""
        if not self.identity.in_any(list(groups)):
            raise errors.Forbidden(f"{self.name} is in none of the groups {list(groups)} that {what} needs")


def caller(identify: Identify) -> Callable[..., Caller]:
    """The FastAPI dependency of every API route: the caller, or 401 naming what is wrong."""

    def dependency(
        authorization: Annotated[str | None, Header()] = None,
        x_mlcd_via: Annotated[str | None, Header()] = None,
    ) -> Caller:
        # HTTPException rather than Unauthorized: a router mounted on a bare FastAPI app (as some tests
        # do) answers 401 all the same; create_app renders both as {"error": ...}.
        token = auth.bearer(authorization)
        if token is None:
            raise HTTPException(401, "missing API token: send Authorization: Bearer <token>", _CHALLENGE)
        identity = identify(token)
        if identity is None:
            raise HTTPException(401, "unknown API token", _CHALLENGE)
        via: Surface = x_mlcd_via if x_mlcd_via in ("cli", "ui") else "api"  # type: ignore[assignment]
        return Caller(identity, via)

    return dependency


def install_error_handlers(app: FastAPI) -> None:
    """Map mlcd errors, request validation, HTTP exceptions and store outages to one error shape."""

    @app.exception_handler(errors.MlcdError)
    async def _mlcd_error(_: Request, error: errors.MlcdError) -> JSONResponse:
        status = status_for(error)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        # An adapter's message may name its server's URL, credentials and all (user:password@host).
        reason = logs.without_url_credentials(str(error))
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(SQLAlchemyError)
    async def _store_error(_: Request, error: SQLAlchemyError) -> JSONResponse:
        # Connection loss, a locked or unmigrated store, a pool timeout: the caller can only retry.
        log.warning("state store error", error=f"{type(error).__name__}: {error}".splitlines()[0])
        return _store_down()

    @app.exception_handler(OSError)
    async def _unreachable(_: Request, error: OSError) -> JSONResponse:
        # asyncpg raises the socket's own error when the database cannot be reached at all.
        log.warning("state store unreachable", error=f"{type(error).__name__}: {error}")
        return _store_down()

    @app.exception_handler(Exception)
    async def _fault(_: Request, error: Exception) -> JSONResponse:
        log.error("request failed inside mlcd", error=f"{type(error).__name__}: {error}")
        return JSONResponse({"error": "internal error; see the mlcd logs"}, status_code=500)


def _store_down() -> JSONResponse:
    return JSONResponse({"error": STORE_DOWN}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


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

    install_error_handlers(app)
    return app
