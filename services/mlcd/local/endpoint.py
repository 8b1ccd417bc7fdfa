"""Where the running `mlcd up` listens, kept in MLCD_HOME so the CLI finds it without MLCD_API_URL.

`mlcd up --port P` records its URL and the file holding its admin token; `mlcd gates …`, `mlcd events …`
and the other API commands read it when MLCD_API_URL / MLCD_API_TOKEN are not set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "endpoint.json"


@dataclass(frozen=True)
class Endpoint:
    url: str
    token_file: Path | None


def record(home: Path, url: str, token_file: Path | None) -> Path:
    """Write (atomically) where this `mlcd up` serves its API and where its admin token is; the file path."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / FILE_NAME
    body = {"url": url, "token_file": str(token_file.resolve()) if token_file else None, "pid": os.getpid()}
    scratch = target.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(body) + "\n")
    scratch.replace(target)
    return target


def forget(home: Path) -> None:
    """Remove the record when this process wrote it (a second `mlcd up` may have replaced it)."""
    found = home / FILE_NAME
    try:
        if json.loads(found.read_text()).get("pid") == os.getpid():
            found.unlink()
    except (OSError, ValueError, AttributeError):
        return


def read(home: Path) -> Endpoint | None:
    """The recorded endpoint, or None when there is none or it is unreadable."""
    try:
        body = json.loads((home / FILE_NAME).read_text())
        url = body["url"]
        token_file = body.get("token_file")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(url, str) or not url:
        return None
    return Endpoint(url, Path(token_file) if isinstance(token_file, str) and token_file else None)
