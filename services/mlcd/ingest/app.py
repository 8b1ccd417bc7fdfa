"""The webhook endpoints: POST /hooks/gitlab, /hooks/minio, /hooks/alertmanager, /hooks/mlflow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd.bus.port import Bus
from mlcd.bus.runtime import RelayWaker
from mlcd.config import Settings
from mlcd.ingest.delivery import ModelDirectory, Source
from mlcd.ingest.intake import Intake
from mlcd.ingest.publisher import Publisher

OptionalHeader = Annotated[str | None, Header()]
Endpoint = Callable[..., Awaitable[JSONResponse]]


class EventRef(BaseModel):
    id: str
    type: str
    model: str | None


class DeliveryResult(BaseModel):
    status: Literal["published", "spooled", "duplicate", "parked"]
    events: list[EventRef]


class ErrorBody(BaseModel):
    error: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DeliveryResult, "description": "A redelivery of events already taken; nothing new."},
    202: {
        "model": DeliveryResult,
        "description": "Durable: published to the broker, spooled to the outbox, or parked on the DLQ.",
    },
    401: {"model": ErrorBody, "description": "Missing or wrong secret, or none configured for this source."},
    413: {"model": ErrorBody, "description": "Body above MLCD_WEBHOOK_MAX_BODY_BYTES."},
    503: {
        "model": ErrorBody,
        "description": "Neither the broker nor the state store could take the event; retry later.",
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    },
}
_ANY_BODY = {
    "requestBody": {
        "required": True,
        "description": "The source's JSON. Once authenticated any body is taken: one mlcd cannot parse is "
        "answered 202 and parked raw on the DLQ, never refused.",
        "content": {"application/json": {"schema": {}}},
    }
}


def router(
    *,
    settings: Settings,
    policies: ModelDirectory,
    bus: Bus,
    engine: AsyncEngine,
    waker: RelayWaker | None = None,
) -> APIRouter:
    """The webhook routes; `policies` is the PolicyBook, `waker` the outbox relay's."""
    publisher = Publisher(bus, engine, waker, timeout_s=settings.ingest_timeout_s)
    intake = Intake(settings, policies, publisher)
    hooks = APIRouter(prefix="/hooks", tags=["webhooks"])

    async def receive(source: Source, request: Request) -> JSONResponse:
        answer = await intake.receive(source, request)
        return JSONResponse(answer.body, status_code=answer.status_code, headers=dict(answer.headers))

    def route(path: str, summary: str) -> Callable[[Endpoint], Endpoint]:
        return hooks.post(
            path,
            status_code=202,
            summary=summary,
            response_model=DeliveryResult,
            responses=_RESPONSES,
            openapi_extra=_ANY_BODY,
        )

    @route("/gitlab", "GitLab push, tag push, merge request, note and pipeline hooks")
    async def gitlab_hook(
        request: Request,
        x_gitlab_token: OptionalHeader = None,
        x_gitlab_event: OptionalHeader = None,
        idempotency_key: OptionalHeader = None,
        x_gitlab_event_uuid: OptionalHeader = None,
        webhook_id: OptionalHeader = None,
        webhook_timestamp: OptionalHeader = None,
        webhook_signature: OptionalHeader = None,
    ) -> JSONResponse:
        return await receive("gitlab", request)

    @route("/minio", "MinIO bucket notifications (S3 event JSON)")
    async def minio_hook(request: Request, authorization: OptionalHeader = None) -> JSONResponse:
        return await receive("minio", request)

    @route("/alertmanager", "Alertmanager webhook, version 4")
    async def alertmanager_hook(request: Request, authorization: OptionalHeader = None) -> JSONResponse:
        return await receive("alertmanager", request)

    @route("/mlflow", "MLflow 3 registry webhooks, HMAC-signed")
    async def mlflow_hook(
        request: Request,
        x_mlflow_signature: OptionalHeader = None,
        x_mlflow_delivery_id: OptionalHeader = None,
        x_mlflow_timestamp: OptionalHeader = None,
    ) -> JSONResponse:
        return await receive("mlflow", request)

    return hooks
