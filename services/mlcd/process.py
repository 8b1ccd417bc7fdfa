"""The life of a process (`mlcd serve SERVICE`, `mlcd up`): one signal path from the first step to the drain.

SIGTERM or SIGINT ends the process the same way whenever it comes. While the process is still starting
(a companion such as the embedded MLflow server, the store's migration, the consumers' subscriptions) the
start is cancelled, whatever had started is stopped, and the exit code is 128 + the signal's number. Once
serving, HTTP stops first, then the host drains (each worker finishes and commits what it holds, the relay
flushes the outbox), the ports close, and the exit code is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import uvicorn

from mlcd import bootstrap, logs
from mlcd.errors import ConfigError

log = logs.get(__name__)

# Idle keep-alive connections stay open longer than any client or proxy in front keeps them (httpx 5 s,
# ingress-nginx and AWS ALB 60 s, Go's http.Transport 90 s). With uvicorn's default of 5 s, a sender that
# reuses a connection just as the server closes it gets a reset instead of an answer: a failed webhook
# delivery, or a 502 from the proxy (seen in the soak test as an httpx ReadError).
KEEP_ALIVE_S = 120
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Companion(Protocol):
    """A child process the services need before they start (the embedded MLflow server)."""

    async def start(self) -> None: ...

    def stop(self) -> None: ...


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
    compose: Callable[[], bootstrap.System],
    *,
    companions: Sequence[Companion] = (),
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start the companions, compose the system, serve until a signal (or `stop`), then drain and close.

    Returns the exit code: 0 after a drain, 128 + the signal's number when a signal cut the start short.
    """
    stop = stop or asyncio.Event()
    started: list[Companion] = []
    with _stop_signals(stop) as signals:
        try:
            for companion in companions:
                started.append(companion)
                await companion.start()
            system = compose()
            try:
                await system.host.start()
                await _serve_http(system, stop, signals, on_ready)
            finally:
                await system.host.stop()
                await system.close()
        except asyncio.CancelledError:
            if signals.received is None:
                raise
            _uncancel()
            log.info("stopped while starting", signal=signals.received)
            return 128 + signals.received
        finally:
            for companion in reversed(started):
                companion.stop()
    return 0


class _Signals:
    """Which stop signal came, and whether the process is serving yet (before that, a signal cancels)."""

    def __init__(self, stop: asyncio.Event, task: asyncio.Task[object]) -> None:
        self.stop = stop
        self.task = task
        self.received: int | None = None
        self.serving = False

    def __call__(self, signum: int) -> None:
        self.received = self.received or signum
        self.stop.set()
        if not self.serving:
            self.task.cancel()


@contextlib.contextmanager
def _stop_signals(stop: asyncio.Event) -> Iterator[_Signals]:
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    signals = _Signals(stop, task)
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signals, sig)
    try:
        yield signals
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _uncancel() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # mlcd owns SIGTERM/SIGINT: a stop drains the consumers as well as the HTTP server.
        yield


async def _serve_http(
    system: bootstrap.System,
    stop: asyncio.Event,
    signals: _Signals,
    on_ready: Callable[[], None] | None,
) -> None:
    settings = system.settings
    server: _Server | None = None
    http: asyncio.Task[None] | None = None
    if system.app is not None:
        config = uvicorn.Config(
            system.app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        server = _Server(config)
        http = asyncio.create_task(server.serve(), name="http")
    try:
        while server is not None and http is not None and not server.started:
            if http.done():
                await http
                raise ConfigError(
                    f"HTTP server could not listen on {settings.http_host}:{settings.http_port}"
                )
            await asyncio.sleep(0.05)
        signals.serving = True
        if server is not None:
            log.info("listening", url=f"http://{settings.http_host}:{settings.http_port}")
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("stop requested; draining")
    finally:
        signals.serving = True  # from here on a second signal must not cut the drain short
        if server is not None and http is not None:
            server.should_exit = True
            await asyncio.gather(http, return_exceptions=True)
