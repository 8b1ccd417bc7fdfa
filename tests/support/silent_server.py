"""A TCP server that accepts every connection and never answers: an outside system that hangs.

Stands in for an MLflow (or any HTTP) server whose process is stuck: the connect succeeds, the request is
read, and the caller waits for a reply that never comes, so only the caller's own timeout ends the call.
"""

from __future__ import annotations

import socket
import threading

from tests.support import processes


class SilentServer:
    def __init__(self) -> None:
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(connection)  # held open, never read from or written to
