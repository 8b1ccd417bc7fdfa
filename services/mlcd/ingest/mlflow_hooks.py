"""MLflow 3 registry webhooks → CandidateRegistered when a version of a model with a policy is created.

Versions that mlcd's own training registered carry a tag under `mlcd.` and are journaled as ignored:
the trainer already announced them.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from mlcd import events
from mlcd.ingest.delivery import (
    Envelope,
    ModelDirectory,
    body_digest,
    envelope,
    ignored,
    load_object,
    validate,
)

MLCD_TAG_PREFIX = "mlcd."


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ModelVersion(_Body):
    name: str
    version: str
    source: str = ""
    run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class _Webhook(_Body):
    entity: str
    action: str
    data: dict[str, object]


def delivery_key(headers: Mapping[str, str], body: bytes) -> str:
    return headers.get("x-mlflow-delivery-id") or body_digest(body)


def parse(body: bytes, headers: Mapping[str, str], models: ModelDirectory) -> list[Envelope]:
    hook = validate(_Webhook, load_object(body), "MLflow webhook")
    identity = ("mlflow", delivery_key(headers, body))
    kind = f"{hook.entity}.{hook.action}"
    if kind != "model_version.created":
        return [ignored("mlflow", kind, f"mlcd does not act on {kind}", identity)]
    version = validate(_ModelVersion, hook.data, "model_version.created data")
    if models.get(version.name) is None:
        return [ignored("mlflow", kind, f"no policy for model {version.name!r}", identity)]
    if any(tag.startswith(MLCD_TAG_PREFIX) for tag in version.tags):
        return [ignored("mlflow", kind, "registered by mlcd's own training", identity, model=version.name)]
    candidate = events.CandidateRegistered(
        model=version.name, model_version=version.version, run_id=version.run_id, source=version.source
    )
    return [envelope(candidate, identity)]
