"""`mlcd up`: every service in one process on the embedded defaults, and the HTTP API on one port.

In-process bus, SQLite state, an MLflow server under MLCD_HOME, objects in a folder, the KFP local runner,
local serving. A second `mlcd up` picks up where the first stopped: all state is under MLCD_HOME.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from mlcd import auth, bootstrap, logs
from mlcd.adapters.mlflow import EMBEDDED_PORT_OFFSET
from mlcd.config import Settings
from mlcd.local.mlflow_server import EmbeddedMlflow
from mlcd.local.object_watch import ObjectFolderWatcher
from mlcd.local.progress import ProgressView
from mlcd.local.secrets import with_webhook_secrets
from mlcd.runner import ServiceHost
from mlcd.serve import Companion, run_with_http

log = logs.get(__name__)


def prepare(settings: Settings) -> Settings:
    """Create MLCD_HOME, the webhook secrets and (if absent) the API tokens file with an admin token."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings = with_webhook_secrets(settings)
    if auth.ensure_tokens_file(settings.effective_tokens_file) is not None:
        print(
            f"mlcd: wrote an admin API token to {settings.home / 'admin-token'} "
            f"(tokens file {settings.effective_tokens_file})",
            file=sys.stderr,
        )
    return settings


async def up(
    settings: Settings,
    *,
    progress: bool = False,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    settings = prepare(settings)
    mlflow = None
    if settings.mlflow_tracking_uri is None:
        mlflow = EmbeddedMlflow(settings.home, settings.http_port + EMBEDDED_PORT_OFFSET)
        await mlflow.start()
    ports: dict[str, Any] = {}
    try:
        ports = bootstrap.build_ports(settings)
        host = ServiceHost(settings, bootstrap.consumer_services(), ports)
        app = bootstrap.app(settings, host, ports, with_ui=True)
        companions: list[Companion] = bootstrap.ingest_companions(settings, host, ports)
        if settings.s3_endpoint is None and settings.minio_webhook_token is not None:
            watcher = ObjectFolderWatcher(
                settings.home / "objects",
                f"http://{settings.http_host}:{settings.http_port}/hooks/minio",
                settings.minio_webhook_token.get_secret_value(),
            )
            companions.append(watcher.run)
        if progress:
            companions.append(ProgressView(host.engine).run)
        return await run_with_http(host, app, settings, companions, stop=stop, on_ready=on_ready)
    finally:
        await bootstrap.close_ports(ports)
        if mlflow is not None:
            mlflow.stop()
