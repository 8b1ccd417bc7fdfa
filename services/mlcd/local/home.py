"""MLCD_HOME for the embedded default: the checks `mlcd up` makes before it starts anything, and the files
it writes on a first start (the folder, webhook secrets, an API tokens file with an admin token)."""

from __future__ import annotations

import sys
from pathlib import Path

from mlcd import auth, process
from mlcd.adapters.mlflow import EMBEDDED_PORT_OFFSET
from mlcd.config import Settings
from mlcd.errors import ConfigError
from mlcd.local.secrets import with_webhook_secrets
from mlcd.policy.book import PolicyBook

MAX_PORT = 65535


def prepare(settings: Settings) -> Settings:
    """Refuse a port mlcd up cannot use; create MLCD_HOME, the webhook secrets and (if absent) the API
    tokens file with an admin token. Returns the settings with the webhook secrets filled in."""
    configured = settings.api_tokens_file
    if configured is not None and not configured.is_file():
        # a token written beside a path that does not exist would be one nobody configured or expects
        raise ConfigError(
            f"MLCD_API_TOKENS_FILE {configured} does not exist: create it (a YAML list of "
            "{name, groups, token_sha256}) or unset it and mlcd up writes one with an admin token"
        )
    if settings.mlflow_tracking_uri is None and settings.http_port + EMBEDDED_PORT_OFFSET > MAX_PORT:
        raise ConfigError(
            f"port {settings.http_port} leaves no port for the embedded MLflow server (port + "
            f"{EMBEDDED_PORT_OFFSET}): use a port up to {MAX_PORT - EMBEDDED_PORT_OFFSET}, or set "
            "MLCD_MLFLOW_TRACKING_URI"
        )
    process.ensure_port_free(settings.http_host, settings.http_port)
    settings.home.mkdir(parents=True, exist_ok=True)
    settings = with_webhook_secrets(settings)
    if auth.ensure_tokens_file(settings.effective_tokens_file) is not None:
        print(
            f"mlcd: wrote an admin API token to {settings.home / 'admin-token'} "
            f"(tokens file {settings.effective_tokens_file})",
            file=sys.stderr,
        )
    return settings


def landing_folders(settings: Settings) -> list[Path]:
    """The folder each model's data batches land in (created), when objects live in MLCD_HOME."""
    if settings.s3_endpoint is not None:
        return []
    folders = []
    for policy in PolicyBook(settings.policies_dir).all():
        if policy.data is not None:
            folder = settings.home / "objects" / policy.data.bucket / policy.data.prefix
            folder.mkdir(parents=True, exist_ok=True)
            folders.append(folder)
    return folders


def banner(settings: Settings) -> str:
    """What `mlcd up` prints once it serves: where to point a browser, the CLI and data batches."""
    url = f"http://{settings.http_host}:{settings.http_port}"
    lines = [
        f"mlcd up: serving on {url}",
        f"  on-call page   {url}/ui",
        f"  API token      {settings.home / 'admin-token'} (tokens file {settings.effective_tokens_file})",
    ]
    lines += [f"  data batches   {folder}/" for folder in landing_folders(settings)]
    return "\n".join(lines)
