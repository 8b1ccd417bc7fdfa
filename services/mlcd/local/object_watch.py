"""Embedded stand-in for MinIO's bucket notifications: a file dropped in MLCD_HOME/objects is an upload.

The watcher sends MinIO's own notification JSON to `/hooks/minio`, so a dropped file takes exactly the
path a real upload takes (authentication, model lookup, deterministic ids, durability).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx

from mlcd import logs

log = logs.get(__name__)

_RESULTS_MARKERS = ("_validation/",)


def notification(bucket: str, key: str, size: int, etag: str, sequencer: str) -> dict[str, Any]:
    """The JSON MinIO posts for one `s3:ObjectCreated:Put` (object key URL-encoded as MinIO does)."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": datetime.now(UTC).isoformat(),
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": quote_plus(key, safe="/"),
                        "size": size,
                        "eTag": etag,
                        "contentType": "text/csv",
                        "sequencer": sequencer,
                    },
                },
            }
        ],
    }


def _files(root: Path) -> Iterator[tuple[str, str, Path]]:
    if not root.is_dir():
        return
    for bucket_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
            key = path.relative_to(bucket_dir).as_posix()
            if not any(marker in key for marker in _RESULTS_MARKERS) and not path.name.startswith("."):
                yield bucket_dir.name, key, path


class ObjectFolderWatcher:
    def __init__(self, root: Path, hook_url: str, token: str, interval_s: float = 1.0) -> None:
        self.root = root
        self.hook_url = hook_url
        self.token = token
        self.interval_s = interval_s
        self._seen: dict[Path, tuple[int, int]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                await self.scan(client)
                try:
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                except TimeoutError:
                    pass

    async def scan(self, client: httpx.AsyncClient) -> None:
        for bucket, key, path in _files(self.root):
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path) == stamp:
                continue
            etag = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            body = notification(bucket, key, stat.st_size, etag, f"{stat.st_mtime_ns:X}")
            try:
                response = await client.post(
                    self.hook_url, json=body, headers={"Authorization": f"Bearer {self.token}"}
                )
            except httpx.HTTPError as e:
                log.warning("object notification not delivered; will retry", key=key, error=str(e))
                continue
            if response.status_code < 300:
                self._seen[path] = stamp
            else:
                log.warning("object notification refused", key=key, status=response.status_code)
