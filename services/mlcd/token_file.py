"""The API tokens file (MLCD_API_TOKENS_FILE) as the HTTP API reads it: reread whenever it changes, so a
token added or revoked takes effect without a restart. The tokens themselves are checked in `auth`."""

from __future__ import annotations

from pathlib import Path

from mlcd.auth import Identity, TokenBook


class Identifier:
    """API token check against MLCD_API_TOKENS_FILE, reread when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._book = TokenBook([])

    def __call__(self, token: str | None) -> Identity | None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._stamp:
            self._book, self._stamp = TokenBook.load(self.path), stamp
        return self._book.identify(token)
