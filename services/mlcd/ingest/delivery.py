"""What every webhook parser shares: the model directory it asks, deterministic envelopes, parse failures.

Parsers are pure: bytes and headers in, envelopes out; `Unparseable` when a body is not what the source
documents, so the caller parks it raw instead of refusing it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from mlcd import events
from mlcd.policy.schema import Policy

SOURCE = "mlcd/ingest"
Source = Literal["gitlab", "minio", "alertmanager", "mlflow"]
Envelope = events.Envelope[events.Payload]
M = TypeVar("M", bound=BaseModel)


class Unparseable(Exception):
    """An authenticated body that is not the shape its source documents; the message says why."""


class ModelDirectory(Protocol):
    """Which model a delivery concerns (PolicyBook answers it)."""

    def for_code(self, project: str, branch: str | None = None) -> list[Policy]: ...

    def for_object(self, bucket: str, key: str) -> Policy | None: ...

    def get(self, model: str) -> Policy | None: ...


def envelope(data: events.Payload, identity: tuple[str, ...], subject: str | None = None) -> Envelope:
    """An event whose id derives from the source's own identity, so a redelivery yields the same id."""
    return events.new_event(
        data, source=SOURCE, id=events.event_id(*identity), subject=subject, time=datetime.now(UTC)
    )


def ignored(
    source: Source,
    kind: str,
    reason: str,
    identity: tuple[str, ...],
    *,
    model: str | None = None,
    subject: str | None = None,
) -> Envelope:
    """The journal line for a delivery mlcd does not act on."""
    data = events.DeliveryIgnored(model=model, source=source, kind=kind, reason=reason)
    return envelope(data, (*identity, "ignored"), subject=subject)


def body_digest(body: bytes) -> str:
    """Identity of a delivery whose source names none: the same bytes redelivered give the same id."""
    return hashlib.sha256(body).hexdigest()


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # only such bodies need the costly check below


def load_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
        if _SURROGATE_ESCAPE.search(body):
            # A \ud800 escape decodes to a lone surrogate, which no later step (event ids, Kafka) can encode.
            json.dumps(data, ensure_ascii=False).encode()
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Unparseable(f"body is not JSON: {e}") from e
    except UnicodeEncodeError as e:
        raise Unparseable(f"body holds a lone surrogate {e.object[e.start : e.end]!r}, not text") from e
    except RecursionError as e:
        raise Unparseable("body is JSON nested too deeply to read") from e
    if not isinstance(data, dict):
        raise Unparseable(f"body is JSON {type(data).__name__}, expected an object")
    return data


def validate(model: type[M], data: Any, what: str) -> M:
    """Validate `data` as `model`; an `Unparseable` names every field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or what}: {err['msg']}" for err in e.errors())
        raise Unparseable(f"unexpected {what}: {problems}") from e
