"""One delivery's way in: size limit, authentication, parsing, then durable publishing or parking.

Every outcome is an answer a sender can act on: 2xx once durable, 401, 413, or 503 with Retry-After;
bad input never becomes a 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from mlcd import events, logs, metrics
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, Unauthorized
from mlcd.ingest import alertmanager, gitlab, minio, mlflow_hooks
from mlcd.ingest.authentication import authenticate
from mlcd.ingest.delivery import Envelope, ModelDirectory, Source, Unparseable, body_digest, ignored
from mlcd.ingest.publisher import Outcome, Publisher, Status

log = logs.get(__name__)
RETRY_AFTER_S = 30
# Parked deliveries name this topic as their origin: `mlcd dlq replay` brings them back to ingest there.
RAW_TOPIC = events.DeliveryIgnored.topic()
_SECRET_HEADERS = frozenset(
    {"authorization", "x-gitlab-token", "webhook-signature", "x-mlflow-signature", "cookie"}
)


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, object]
    headers: Mapping[str, str]


class Intake:
    def __init__(self, settings: Settings, models: ModelDirectory, publisher: Publisher) -> None:
        self.settings = settings
        self.models = models
        self.publisher = publisher

    async def receive(self, source: Source, request: Request) -> Answer:
        with logs.bound(webhook_source=source):
            answer = await self._answer(source, request)
        metrics.WEBHOOKS.labels(source, str(answer.status_code)).inc()
        return answer

    async def _answer(self, source: Source, request: Request) -> Answer:
        try:
            body = await read_limited(request, self.settings.webhook_max_body_bytes)
        except BodyTooLarge:
            log.warning("delivery refused: body too large", limit=self.settings.webhook_max_body_bytes)
            return _error(413, f"body exceeds {self.settings.webhook_max_body_bytes} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            authenticate(source, self.settings, headers, body, time.time())
        except Unauthorized as e:
            log.warning("delivery refused: not authenticated", reason=str(e))
            return _error(401, str(e))
        try:
            outcome = await self._accept(source, headers, body)
        except AdapterUnavailable as e:
            log.error("delivery refused: nothing durable could take it", reason=str(e))
            return _error(503, str(e), {"Retry-After": str(RETRY_AFTER_S)})
        return _accepted(outcome)

    async def _accept(self, source: Source, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            envelopes = parse(source, headers, body, self.models)
        except Unparseable as e:
            log.warning("delivery parked: unparseable", reason=str(e))
            kind = headers.get("x-gitlab-event", source)
            journal = ignored(
                source, kind, f"unparseable, parked on the DLQ: {e}", _identity(source, headers, body)
            )
            return await self.publisher.park(raw_record(source, headers, body), str(e), journal)
        outcome = await self.publisher.deliver(envelopes)
        log.info("delivery accepted", status=outcome.status.value, event_ids=[e.id for e in outcome.events])
        return outcome


def parse(source: Source, headers: Mapping[str, str], body: bytes, models: ModelDirectory) -> list[Envelope]:
    """The events of one delivery; raises Unparseable for a body its source would not send."""
    if source == "gitlab":
        return gitlab.parse(body, headers, models)
    if source == "minio":
        return minio.parse(body, models)
    if source == "alertmanager":
        return alertmanager.parse(body, models)
    return mlflow_hooks.parse(body, headers, models)


def raw_record(source: Source, headers: Mapping[str, str], body: bytes) -> events.Record:
    """The delivery as kept on the DLQ: body and headers, secrets left out, so it can be replayed."""
    kept = tuple((k, v.encode()) for k, v in headers.items() if k not in _SECRET_HEADERS)
    return events.Record(
        topic=RAW_TOPIC, key=source.encode(), value=body, headers=(*kept, ("mlcd_source", source.encode()))
    )


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _identity(source: Source, headers: Mapping[str, str], body: bytes) -> tuple[str, ...]:
    if source == "gitlab":
        return ("gitlab", gitlab.delivery_key(headers, body))
    if source == "mlflow":
        return ("mlflow", mlflow_hooks.delivery_key(headers, body))
    return (source, body_digest(body))


def _error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status_code, {"error": message}, headers or {})


def _accepted(outcome: Outcome) -> Answer:
    body: dict[str, object] = {
        "status": outcome.status.value,
        "events": [
            {"id": e.id, "type": e.type, "model": getattr(e.data, "model", None)} for e in outcome.events
        ],
    }
    return Answer(200 if outcome.status is Status.DUPLICATE else 202, body, {})
