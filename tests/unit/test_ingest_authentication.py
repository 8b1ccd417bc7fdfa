"""Each webhook source proves itself with its secret or signature; an unconfigured source is closed."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr

from mlcd.config import Settings
from mlcd.errors import Unauthorized
from mlcd.ingest.authentication import authenticate

NOW = 1_790_000_000.0
BODY = b'{"object_kind": "push"}'
SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
SIGNING_TOKEN = "whsec_" + base64.b64encode(SIGNING_KEY).decode()


def settings(**values: str) -> Settings:
    return Settings.model_validate({k: SecretStr(v) for k, v in values.items()})


def standard_signature(msg_id: str, timestamp: int, body: bytes, key: bytes = SIGNING_KEY) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def mlflow_headers(secret: str, body: bytes, timestamp: int, delivery_id: str = "d-1") -> dict[str, str]:
    content = f"{delivery_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()
    return {
        "x-mlflow-delivery-id": delivery_id,
        "x-mlflow-timestamp": str(timestamp),
        "x-mlflow-signature": f"v1,{signature}",
    }


def test_gitlab_token_must_match() -> None:
    config = settings(gitlab_webhook_secret="s3cret")
    authenticate("gitlab", config, {"x-gitlab-token": "s3cret"}, BODY, NOW)
    with pytest.raises(Unauthorized, match="X-Gitlab-Token"):
        authenticate("gitlab", config, {"x-gitlab-token": "guess"}, BODY, NOW)


@pytest.mark.parametrize("source", ["gitlab", "minio", "alertmanager", "mlflow"])
def test_a_source_without_a_configured_secret_is_closed(source: str) -> None:
    with pytest.raises(Unauthorized, match="closed"):
        authenticate(source, Settings(), {"x-gitlab-token": "", "authorization": "Bearer "}, BODY, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "setting"), [("minio", "minio_webhook_token"), ("alertmanager", "alertmanager_token")]
)
def test_bearer_sources_need_their_token(source: str, setting: str) -> None:
    config = settings(**{setting: "tok-123"})
    authenticate(source, config, {"authorization": "Bearer tok-123"}, BODY, NOW)  # type: ignore[arg-type]
    with pytest.raises(Unauthorized, match="bearer"):
        authenticate(source, config, {"authorization": "Bearer tok-999"}, BODY, NOW)  # type: ignore[arg-type]
    with pytest.raises(Unauthorized):
        authenticate(source, config, {}, BODY, NOW)  # type: ignore[arg-type]


def test_signed_gitlab_delivery_is_verified_when_a_signing_token_is_set() -> None:
    config = settings(gitlab_webhook_secret="s3cret", gitlab_signing_token=SIGNING_TOKEN)
    ts = int(NOW)
    good = {
        "x-gitlab-token": "s3cret",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1,bm90LWl0 " + standard_signature("msg_1", ts, BODY),
    }
    authenticate("gitlab", config, good, BODY, NOW)
    with pytest.raises(Unauthorized, match="does not match"):
        authenticate("gitlab", config, good, BODY + b" ", NOW)
    with pytest.raises(Unauthorized, match="replay"):
        authenticate("gitlab", config, good, BODY, NOW + 3600)
    with pytest.raises(Unauthorized, match="missing"):
        authenticate("gitlab", config, {"x-gitlab-token": "s3cret"}, BODY, NOW)


def test_mlflow_signature_and_freshness_are_checked() -> None:
    config = settings(mlflow_webhook_secret="mlflow-secret")
    headers = mlflow_headers("mlflow-secret", BODY, int(NOW))
    authenticate("mlflow", config, headers, BODY, NOW)
    with pytest.raises(Unauthorized, match="does not match"):
        authenticate("mlflow", config, mlflow_headers("wrong", BODY, int(NOW)), BODY, NOW)
    with pytest.raises(Unauthorized, match="replay"):
        authenticate("mlflow", config, mlflow_headers("mlflow-secret", BODY, int(NOW) - 301), BODY, NOW)
    with pytest.raises(Unauthorized, match="Unix seconds"):
        authenticate("mlflow", config, {**headers, "x-mlflow-timestamp": "yesterday"}, BODY, NOW)
