"""A loopback receiver for incoming-webhook messages, answering as Slack does (200 `ok`), as Teams'
Workflows do (202) or as a generic webhook (200), recording each JSON body it takes.

A message counts as delivered once its answer is written (`delivered`); `received` also holds the ones
that arrived but were never answered, as when the sender died mid-request (`hold_at`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import processes


class ChatReceiver:
    """Serves POST /hooks/<anything> on a free loopback port; `url(name)` is a webhook URL to give out."""

    def __init__(self, status: int = 200, body: bytes = b"ok", hold_at: int | None = None) -> None:
        self.status = status
        self.body = body
        self.hold_at = hold_at  # the n-th message (1-based) is held unanswered until `release()`
        self.received: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.holding = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.port = processes.free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = {"path": self.path, "body": json.loads(raw)}
                with receiver._lock:
                    receiver.received.append(message)
                    receiver.headers.append(dict(self.headers.items()))
                    held = receiver.hold_at is not None and len(receiver.received) == receiver.hold_at
                if held:
                    receiver.holding.set()
                    receiver._release.wait(120)
                    return  # never answered: the sender is gone
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)
                self.wfile.flush()
                with receiver._lock:
                    receiver.delivered.append(message)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str = "slack") -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}/T000/B000/XXXXSECRET"

    def release(self) -> None:
        self._release.set()

    def texts(self) -> list[str]:
        with self._lock:
            return [str(m["body"].get("text", "")) for m in self.delivered]

    def __enter__(self) -> ChatReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
