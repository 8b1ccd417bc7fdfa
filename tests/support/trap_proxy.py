"""An HTTP proxy in front of one outside system (GitLab, KFP, MLflow, the Kubernetes API) for fault tests.

It forwards every request unchanged. A trap armed on it fires on the n-th request that matches a method,
a path pattern and optionally a piece of the body: the request is forwarded, the outside system answers
(the side effect has happened), then the trap's action runs (kill -9 the caller) before the answer is
relayed, so the caller never learns that its call succeeded. That is the moment a crash does the most
harm: the effect is done, the caller's transaction is not committed.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support import processes

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


@dataclass
class Trap:
    """Fires once, on the `nth` matching request (the next one if another trap took that); `fired` is set
    once its action has run."""

    name: str
    method: str
    path: re.Pattern[str]
    action: Callable[[], None]
    body: bytes = b""
    nth: int = 1
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return method == self.method and bool(self.path.search(path)) and self.body in body


class TrapProxy:
    """Forwards to `upstream` (http://host:port); `url` is where the caller should point instead."""

    def __init__(self, upstream: str, name: str = "") -> None:
        split = urlsplit(upstream)
        self.name = name or upstream
        self.upstream_host = split.hostname or "127.0.0.1"
        self.upstream_port = split.port or 80
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, as the caller sent them
        self._traps: list[Trap] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def arm(
        self,
        name: str,
        method: str,
        path: str,
        action: Callable[[], None],
        *,
        body: bytes = b"",
        nth: int = 1,
    ) -> Trap:
        """Run `action` after the upstream answered the `nth` request matching method, path regex, body."""
        trap = Trap(name, method.upper(), re.compile(path), action, body, nth)
        with self._lock:
            self._traps.append(trap)
        return trap

    def start(self) -> TrapProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                proxy._forward(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

        port = processes.free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"trap-proxy {self.name}",
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        method = request.command
        body = _read_body(request)
        with self._lock:
            self.requests.append((method, request.path))
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            upstream.request(method, request.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        except OSError as e:
            request.send_error(502, f"upstream {self.name} failed: {e!r}")
            return
        finally:
            upstream.close()
        trap = self._springs(method, request.path, body)
        if trap is not None:
            trap.action()
            trap.fired.set()
            request.close_connection = True  # the caller is gone; nothing is relayed
            return
        request.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(payload)

    def _springs(self, method: str, path: str, body: bytes) -> Trap | None:
        with self._lock:
            matching = [trap for trap in self._traps if trap.matches(method, path, body)]
            for trap in matching:
                trap.seen += 1
            # One kill per request: a second trap due on the same request springs on the next match.
            due = next((trap for trap in matching if trap.seen >= trap.nth), None)
            if due is not None:
                self._traps.remove(due)
            return due


def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                request.rfile.readline()
                return b"".join(chunks)
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""
