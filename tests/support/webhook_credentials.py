"""Webhook deliveries that present no, a wrong, or the right credential, as each source would post them.

GitLab sends `X-Gitlab-Token` (and, when mlcd has a signing token, a Standard Webhooks signature), MinIO
and Alertmanager a bearer token, MLflow an HMAC signature over `delivery_id.timestamp.body`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

Source = Literal["gitlab", "minio", "alertmanager", "mlflow"]
SOURCES: tuple[Source, ...] = ("gitlab", "minio", "alertmanager", "mlflow")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
BODIES: dict[Source, str] = {
    "gitlab": "gitlab_push.json",
    "minio": "minio_put_encoded_key.json",
    "alertmanager": "alertmanager_firing.json",
    "mlflow": "mlflow_model_version_created.json",
}
# What a delivery presents: nothing, a wrong value for each credential the source carries, or all right.
VARIANTS: dict[Source, tuple[str, ...]] = {
    "gitlab": ("none", "wrong", "wrong-signature", "right"),
    "minio": ("none", "wrong", "right"),
    "alertmanager": ("none", "wrong", "right"),
    "mlflow": ("none", "wrong", "right"),
}


@dataclass(frozen=True)
class WebhookSecrets:
    """One value per webhook credential; `fresh()` makes unguessable ones with characters that URL-encode."""

    gitlab: str
    gitlab_signing: str  # whsec_<base64 key>, GitLab's Standard Webhooks signing token
    minio: str
    alertmanager: str
    mlflow: str

    @classmethod
    def fresh(cls) -> WebhookSecrets:
        def value(prefix: str) -> str:
            return f"{prefix}/{secrets.token_urlsafe(18)}+="

        signing_key = base64.b64encode(secrets.token_bytes(32)).decode()
        return cls(
            gitlab=value("gitlab-hook"),
            gitlab_signing=f"whsec_{signing_key}",
            minio=value("minio-hook"),
            alertmanager=value("am-hook"),
            mlflow=value("mlflow-hook"),
        )

    def settings(self) -> dict[str, SecretStr]:
        """Keyword arguments of `Settings` that configure every source."""
        return {name: SecretStr(value) for name, value in self._by_setting().items()}

    def environment(self) -> dict[str, str]:
        """The same as `MLCD_*` variables, for a service process."""
        return {f"MLCD_{name.upper()}": value for name, value in self._by_setting().items()}

    def values(self) -> list[str]:
        return list(self._by_setting().values())

    def _by_setting(self) -> dict[str, str]:
        return {
            "gitlab_webhook_secret": self.gitlab,
            "gitlab_signing_token": self.gitlab_signing,
            "minio_webhook_token": self.minio,
            "alertmanager_token": self.alertmanager,
            "mlflow_webhook_secret": self.mlflow,
        }


@dataclass(frozen=True)
class Delivery:
    path: str
    body: bytes
    headers: dict[str, str]


def delivery(
    source: Source,
    keys: WebhookSecrets,
    variant: str,
    body: bytes | None = None,
    now: float | None = None,
    gitlab_event: str = "Push Hook",
) -> Delivery:
    """The request `source` would send presenting `variant` (one of VARIANTS[source]) of its credential.

    The body is a typical one of the source unless given (`gitlab_event` names a GitLab body's kind).
    """
    if variant not in VARIANTS[source]:
        raise ValueError(f"{source} deliveries have no variant {variant!r}")
    body = (FIXTURES / BODIES[source]).read_bytes() if body is None else body
    timestamp = str(int(time.time() if now is None else now))
    headers = {"Content-Type": "application/json"}
    wrong = "not-the-secret-" + secrets.token_hex(8)
    if source == "gitlab":
        headers |= {"X-Gitlab-Event": gitlab_event, "X-Gitlab-Event-UUID": str(uuid.uuid4())}
        if variant != "none":
            message_id = f"msg_{uuid.uuid4().hex}"
            key = base64.b64decode(keys.gitlab_signing.removeprefix("whsec_"))
            signing_key = secrets.token_bytes(32) if variant == "wrong-signature" else key
            headers |= {
                "X-Gitlab-Token": wrong if variant == "wrong" else keys.gitlab,
                "webhook-id": message_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": "v1,"
                + _hmac_b64(signing_key, f"{message_id}.{timestamp}.".encode() + body),
            }
    elif source in ("minio", "alertmanager"):
        token = keys.minio if source == "minio" else keys.alertmanager
        if variant != "none":
            headers["Authorization"] = f"Bearer {wrong if variant == 'wrong' else token}"
    else:
        delivery_id = f"d-{uuid.uuid4().hex}"
        headers |= {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": timestamp}
        if variant != "none":
            secret = wrong if variant == "wrong" else keys.mlflow
            content = f"{delivery_id}.{timestamp}.".encode() + body
            headers["X-MLflow-Signature"] = "v1," + _hmac_b64(secret.encode(), content)
    return Delivery(f"/hooks/{source}", body, headers)


def _hmac_b64(key: bytes, content: bytes) -> str:
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
