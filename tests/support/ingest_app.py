"""The ingest router in a small FastAPI app for tests, served in-process or on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd.bus.port import Bus
from mlcd.bus.runtime import RelayWaker
from mlcd.config import Settings
from mlcd.ingest.app import router
from mlcd.policy.book import PolicyBook
from tests.support import processes

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
GITLAB_SECRET = "gitlab-secret-1"
MINIO_TOKEN = "minio-token-1"
ALERTMANAGER_TOKEN = "alertmanager-token-1"
MLFLOW_SECRET = "mlflow-secret-1"


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "gitlab_webhook_secret": SecretStr(GITLAB_SECRET),
        "minio_webhook_token": SecretStr(MINIO_TOKEN),
        "alertmanager_token": SecretStr(ALERTMANAGER_TOKEN),
        "mlflow_webhook_secret": SecretStr(MLFLOW_SECRET),
        "policies_dir": REPO / "policies",
        "ingest_timeout_s": 1.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def build(config: Settings, bus: Bus, engine: AsyncEngine, waker: RelayWaker | None = None) -> FastAPI:
    app = FastAPI(title="mlcd ingest")
    app.include_router(
        router(settings=config, policies=PolicyBook(config.policies_dir), bus=bus, engine=engine, waker=waker)
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _server(app: FastAPI, port: int | None = None) -> tuple[uvicorn.Server, str]:
    port = port or processes.free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    return uvicorn.Server(config), f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serving(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` on loopback (`port`, else a free one) inside the running loop; yields its base URL."""
    server, url = _server(app, port)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        await task


@contextmanager
def serving_in_thread(app: FastAPI) -> Iterator[str]:
    """Serve `app` from its own thread and loop, for synchronous callers (schemathesis)."""
    server, url = _server(app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        processes.wait_until(lambda: server.started, 30, "ingest app")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
