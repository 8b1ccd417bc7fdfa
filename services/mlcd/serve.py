"""`mlcd serve SERVICE`: one microservice against the configured Kafka and PostgreSQL, with its HTTP face.

Ingest serves the webhooks and the API; the consumer services serve /healthz, /readyz, /status and
/metrics only. One stop path: SIGTERM or SIGINT (or `stop`) stops HTTP, then drains the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from mlcd import bootstrap, logs
from mlcd.config import Settings
from mlcd.errors import ConfigError

log = logs.get(__name__)

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


def ensure_port_free(host: str, port: int) -> None:
    """A ConfigError naming the port when something else listens there, before anything starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port "
                "(mlcd up --port, or MLCD_HTTP_PORT)"
            ) from None


async def run(
    system: bootstrap.System,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start the host, serve HTTP until SIGTERM/SIGINT (or `stop`), then drain and close."""
    settings, app = system.settings, system.app
    assert app is not None
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
    http: asyncio.Task[None] | None = None
    try:
        await system.host.start()
        http = asyncio.create_task(server.serve(), name="http")
        while not server.started:
            if http.done():
                await http
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
        server.should_exit = True
        if http is not None:
            await asyncio.gather(http, return_exceptions=True)
        await system.host.stop()
        await system.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


async def serve(settings: Settings, name: str) -> int:
    if name not in bootstrap.SERVICES:
        raise ConfigError(f"unknown service {name!r}; choose one of {', '.join(bootstrap.SERVICES)}")
    ensure_port_free(settings.http_host, settings.http_port)
    if name == "ingest":
        return await run(bootstrap.system(settings, [], http=True, ui=True))
    return await run(bootstrap.system(settings, [bootstrap.service(name)], http=False))
