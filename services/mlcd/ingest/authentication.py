"""Who may deliver: each source's shared secret or signature, checked in constant time.

A source whose secret is not configured is closed: every delivery to it is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from mlcd import auth
from mlcd.config import Settings
from mlcd.errors import Unauthorized
from mlcd.ingest.delivery import Source


def authenticate(
    source: Source, settings: Settings, headers: Mapping[str, str], body: bytes, now: float
) -> None:
    """Return if the delivery proves it comes from `source`, else raise Unauthorized saying why."""
    if source == "gitlab":
        _gitlab(settings, headers, body, now)
    elif source == "minio":
        _bearer("MinIO", settings.minio_webhook_token, headers)
    elif source == "alertmanager":
        _bearer("Alertmanager", settings.alertmanager_token, headers)
    else:
        _mlflow(settings, headers, body, now)


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _bearer(what: str, expected: SecretStr | None, headers: Mapping[str, str]) -> None:
    if not _reveal(expected):
        raise Unauthorized(f"{what} deliveries are closed: no token is configured")
    if not auth.secret_matches(auth.bearer(headers.get("authorization")), _reveal(expected)):
        raise Unauthorized(f"missing or wrong {what} bearer token")


def _gitlab(settings: Settings, headers: Mapping[str, str], body: bytes, now: float) -> None:
    secret = _reveal(settings.gitlab_webhook_secret)
    signing = _reveal(settings.gitlab_signing_token)
    if not secret and not signing:
        raise Unauthorized("GitLab deliveries are closed: no webhook secret is configured")
    if secret and not auth.secret_matches(headers.get("x-gitlab-token"), secret):
        raise Unauthorized("missing or wrong X-Gitlab-Token")
    if signing:
        problem = standard_webhook_problem(signing, headers, body, now, settings.webhook_max_age_s)
        if problem:
            raise Unauthorized(problem)


def _mlflow(settings: Settings, headers: Mapping[str, str], body: bytes, now: float) -> None:
    secret = _reveal(settings.mlflow_webhook_secret)
    if not secret:
        raise Unauthorized("MLflow deliveries are closed: no webhook secret is configured")
    problem = mlflow_signature_problem(secret, headers, body, now, settings.webhook_max_age_s)
    if problem:
        raise Unauthorized(problem)


def _stale(timestamp: str, now: float, max_age_s: int) -> str | None:
    try:
        sent = int(timestamp)
    except ValueError:
        return f"timestamp {timestamp!r} is not Unix seconds"
    away = int(now) - sent  # in integers: a timestamp of 400 digits would overflow a float
    if abs(away) > max_age_s:
        return f"timestamp is {away} s away from now (limit {max_age_s} s): replay refused"
    return None


def _any_v1_matches(signatures: str, expected: str) -> bool:
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        matched |= version == "v1" and hmac.compare_digest(value.encode(), expected.encode())
    return matched


def _hmac_b64(key: bytes, content: bytes) -> str:
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def standard_webhook_problem(
    signing_token: str, headers: Mapping[str, str], body: bytes, now: float, max_age_s: int
) -> str | None:
    """Why a Standard Webhooks signature (webhook-id/-timestamp/-signature) fails; None when it holds."""
    msg_id, timestamp, signatures = (
        headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not msg_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    stale = _stale(timestamp, now, max_age_s)
    if stale:
        return stale
    try:
        key = base64.b64decode(signing_token.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        key = signing_token.encode()
    expected = _hmac_b64(key, f"{msg_id}.{timestamp}.".encode() + body)
    return None if _any_v1_matches(signatures, expected) else "webhook-signature does not match"


def mlflow_signature_problem(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, max_age_s: int
) -> str | None:
    """Why an MLflow X-MLflow-Signature fails; None when it holds."""
    delivery_id, timestamp, signature = (
        headers.get(h) for h in ("x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature")
    )
    if not delivery_id or not timestamp or not signature:
        return "missing X-MLflow-Delivery-Id, X-MLflow-Timestamp or X-MLflow-Signature"
    stale = _stale(timestamp, now, max_age_s)
    if stale:
        return stale
    expected = _hmac_b64(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body)
    return None if _any_v1_matches(signature, expected) else "X-MLflow-Signature does not match"
