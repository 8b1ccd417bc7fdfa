"""Webhook secrets for the embedded runtime: a source with no secret is refused, so `mlcd up` makes them.

Generated once into MLCD_HOME/webhook-secrets.yaml (mode 0600); a secret set in the environment wins.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml
from pydantic import SecretStr

from mlcd.config import Settings

WEBHOOK_SECRETS = (
    "gitlab_webhook_secret",
    "minio_webhook_token",
    "alertmanager_token",
    "mlflow_webhook_secret",
)


def secrets_file(home: Path) -> Path:
    return home / "webhook-secrets.yaml"


def with_webhook_secrets(settings: Settings) -> Settings:
    """Settings with every unset webhook secret filled from (or newly written to) MLCD_HOME."""
    path = secrets_file(settings.home)
    stored: dict[str, str] = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    missing = [name for name in WEBHOOK_SECRETS if name not in stored]
    if missing:
        stored.update({name: secrets.token_urlsafe(24) for name in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(stored))
        path.chmod(0o600)
    update = {name: SecretStr(stored[name]) for name in WEBHOOK_SECRETS if getattr(settings, name) is None}
    return settings.model_copy(update=update)
