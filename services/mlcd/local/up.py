"""`mlcd up`: every service in one process on the embedded defaults, and the HTTP API on one port.

In-process bus, SQLite state, an MLflow server under MLCD_HOME, objects in a folder, the KFP local runner,
local serving. A second `mlcd up` picks up where the first stopped: all state is under MLCD_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator

from mlcd import auth, bootstrap, serve
from mlcd.adapters.mlflow import EMBEDDED_PORT_OFFSET
from mlcd.config import Settings
from mlcd.errors import ConfigError
from mlcd.local import endpoint
from mlcd.local.mlflow_server import EmbeddedMlflow
from mlcd.local.object_watch import ObjectFolderWatcher
from mlcd.local.progress import ProgressView
from mlcd.local.secrets import with_webhook_secrets
from mlcd.supervisor import Worker

MAX_PORT = 65535
TERMINATED = 143  # the exit code of a process stopped by SIGTERM (128 + 15)


def prepare(settings: Settings) -> Settings:
    """Refuse a port mlcd up cannot use; create MLCD_HOME, the webhook secrets and (if absent) the API
    tokens file with an admin token."""
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
    serve.ensure_port_free(settings.http_host, settings.http_port)
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
    try:
        if settings.mlflow_tracking_uri is None:
            mlflow = EmbeddedMlflow(settings.home, settings.http_port + EMBEDDED_PORT_OFFSET)
            with _cancelled_by_sigterm() as terminated:
                await mlflow.start()
            if terminated.is_set():
                return TERMINATED
        system = bootstrap.system(settings, bootstrap.consumer_services(), http=True, ui=True)
        for worker in _companions(settings, system, progress=progress):
            system.host.supervise(worker)

        def ready() -> None:  # the CLI finds this server (URL, admin token) through MLCD_HOME
            url = f"http://{settings.http_host}:{settings.http_port}"
            endpoint.record(settings.home, url, settings.home / "admin-token")
            if on_ready is not None:
                on_ready()

        return await serve.run(system, stop=stop, on_ready=ready)
    finally:
        endpoint.forget(settings.home)
        if mlflow is not None:
            mlflow.stop()


@contextlib.contextmanager
def _cancelled_by_sigterm() -> Iterator[asyncio.Event]:
    """SIGTERM while mlcd up is still starting cancels the start and is set on the event it yields (once
    serving, `serve.run` drains instead); a Ctrl-C cancels as asyncio.run does."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        yield terminated
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        task.uncancel()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _companions(settings: Settings, system: bootstrap.System, *, progress: bool) -> list[Worker]:
    """The embedded default's own workers: the object folder's watcher and the terminal's progress view."""
    companions = []
    if settings.s3_endpoint is None and settings.minio_webhook_token is not None:
        watcher = ObjectFolderWatcher(
            settings.home / "objects",
            f"http://{settings.http_host}:{settings.http_port}/hooks/minio",
            settings.minio_webhook_token.get_secret_value(),
        )
        companions.append(Worker("object-folder-watcher", watcher.run))
    if progress:
        companions.append(Worker("progress", ProgressView(system.host.engine).run))
    return companions
