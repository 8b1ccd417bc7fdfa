"""`mlcd serve SERVICE`: one microservice against the configured Kafka and PostgreSQL, with its HTTP face.

Ingest serves the webhooks and the API; the consumer services serve /healthz, /readyz and /metrics only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI

from mlcd import bootstrap, http, logs
from mlcd.config import Settings
from mlcd.errors import ConfigError
from mlcd.runner import ServiceHost

log = logs.get(__name__)

Companion = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

# Idle keep-alive connections stay open longer than any client or proxy in front keeps them (httpx 5 s,
# ingress-nginx and AWS ALB 60 s, Go's http.Transport 90 s). With uvicorn's default of 5 s, a sender that
# reuses a connection just as the server closes it gets a reset instead of an answer: a failed webhook
# delivery, or a 502 from the proxy (seen in the soak test as an httpx ReadError).
KEEP_ALIVE_S = 120


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # mlcd owns SIGTERM/SIGINT: a stop drains the consumers as well as the HTTP server.
        yield


async def run_with_http(
    host: ServiceHost,
    app: FastAPI,
    settings: Settings,
    companions: Sequence[Companion] = (),
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start the host, serve HTTP and the companions until SIGTERM/SIGINT (or `stop`), then drain."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = _Server(config)
    await host.start()
    tasks = [asyncio.create_task(server.serve(), name="http")]
    tasks += [
        asyncio.create_task(companion(stop), name=getattr(companion, "__name__", "companion"))
        for companion in companions
    ]
    try:
        while not server.started:
            if tasks[0].done():
                await tasks[0]
                raise ConfigError(
                    f"HTTP server could not listen on {settings.http_host}:{settings.http_port}"
                )
            await asyncio.sleep(0.05)
        log.info("listening", url=f"http://{settings.http_host}:{settings.http_port}")
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("stop requested; draining")
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await host.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


async def serve(settings: Settings, name: str) -> int:
    if name not in bootstrap.SERVICES:
        raise ConfigError(f"unknown service {name!r}; choose one of {', '.join(bootstrap.SERVICES)}")
    ports = bootstrap.build_ports(settings)
    try:
        if name == "ingest":
            host = ServiceHost(settings, [], ports)
            app = bootstrap.app(settings, host, ports, with_ui=True)
            companions = bootstrap.ingest_companions(settings, host, ports)
            return await run_with_http(host, app, settings, companions)
        host = ServiceHost(settings, [bootstrap.service(name)], ports)
        return await run_with_http(host, http.create_app([], host.readiness), settings)
    finally:
        await bootstrap.close_ports(ports)
