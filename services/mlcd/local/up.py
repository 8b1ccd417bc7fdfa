"""`mlcd up`: every service in one process on the embedded defaults, and the HTTP API on one port.

In-process bus, SQLite state, an MLflow server under MLCD_HOME, objects in a folder, the KFP local runner,
local serving. A second `mlcd up` picks up where the first stopped: all state is under MLCD_HOME.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable

from mlcd import bootstrap, process
from mlcd.adapters.mlflow import EMBEDDED_PORT_OFFSET
from mlcd.config import Settings
from mlcd.local import endpoint, home
from mlcd.local.mlflow_server import EmbeddedMlflow


async def up(
    settings: Settings,
    *,
    progress: bool = False,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    settings = home.prepare(settings)
    mlflow_port = settings.http_port + EMBEDDED_PORT_OFFSET
    mlflow = [] if settings.mlflow_tracking_uri else [EmbeddedMlflow(settings.home, mlflow_port)]

    def ready() -> None:  # the CLI finds this server (URL, admin token) through MLCD_HOME
        url = f"http://{settings.http_host}:{settings.http_port}"
        endpoint.record(settings.home, url, settings.home / "admin-token")
        print(home.banner(settings), file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready()

    try:
        compose = functools.partial(bootstrap.embedded, settings, progress=progress)
        return await process.run(compose, companions=mlflow, stop=stop, on_ready=ready)
    finally:
        endpoint.forget(settings.home)
