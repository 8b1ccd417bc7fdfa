"""The ingest router in a small FastAPI app for tests, served in-process or on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
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
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
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
def serving_in_thread(make_app: Callable[[], AbstractAsyncContextManager[FastAPI]]) -> Iterator[str]:
    """Serve the app `make_app` opens, from a thread with its own loop (for synchronous callers).

    The app's engine and bus are made and closed inside that loop, where they are used.
    """
    port = processes.free_port()
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        async with make_app() as app:
            server, _ = _server(app, port)
            servers.append(server)
            await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        processes.wait_until(lambda: bool(servers) and servers[0].started, 30, "ingest app")
        yield f"http://127.0.0.1:{port}"
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(10)
