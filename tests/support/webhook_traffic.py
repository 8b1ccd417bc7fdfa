"""Steady webhook traffic against a running ingest: signed GitLab pushes and MinIO notifications, each
delivery unique, sent at a fixed pace, every answer recorded with its event ids and timing.

Loopback only, bounded by the caller's stop event and the per-delivery timeout.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support import flows
from tests.support.ingest_app import FIXTURES, GITLAB_SECRET, MINIO_TOKEN

# GitLab gives up on a webhook delivery after 10 s (its default webhook timeout).
HOOK_TIMEOUT_S = 10.0


@dataclass
class Delivery:
    source: str
    sent_at: float
    answered_at: float = 0.0
    status_code: int | None = None  # None: no answer within the hook's timeout, or the connection failed
    status: str = ""
    event_ids: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def accepted(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def gitlab_push(n: int) -> tuple[str, bytes, dict[str, str]]:
    """The push fixture as delivery number `n`: its own Idempotency-Key, so its own event id."""
    body = (FIXTURES / "gitlab_push.json").read_bytes()
    headers = {
        "X-Gitlab-Token": GITLAB_SECRET,
        "X-Gitlab-Event": "Push Hook",
        "Idempotency-Key": f"push-{n}-{uuid.uuid4().hex[:8]}",
        "Content-Type": "application/json",
    }
    return "/hooks/gitlab", body, headers


_MINIO_TEMPLATE: dict[str, Any] = json.loads((FIXTURES / "minio_put_encoded_key.json").read_bytes())


def minio_put(n: int, prefix: str = "wine_quality/") -> tuple[str, bytes, dict[str, str]]:
    """A MinIO ObjectCreated notification for a new object `<prefix>batch-<n>.csv` in bucket `landing`."""
    notice = copy.deepcopy(_MINIO_TEMPLATE)
    key = f"{prefix}batch-{n}-{uuid.uuid4().hex[:6]}.csv"
    notice["Key"] = f"landing/{key}"
    s3_object = notice["Records"][0]["s3"]["object"]
    s3_object["key"] = key.replace("/", "%2F")
    s3_object["sequencer"] = f"{n:016X}"
    s3_object["versionId"] = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {MINIO_TOKEN}", "Content-Type": "application/json"}
    return "/hooks/minio", json.dumps(notice).encode(), headers


MAKERS = {"gitlab": gitlab_push, "minio": minio_put}


async def post(
    client: httpx.AsyncClient, delivery: Delivery, path: str, body: bytes, headers: dict[str, str]
) -> None:
    """Send one delivery and record its answer (status, event ids, or the error) and when it came."""
    try:
        answer = await client.post(path, content=body, headers=headers)
        delivery.status_code = answer.status_code
        if answer.status_code < 300:
            reply = answer.json()
            delivery.status = reply["status"]
            delivery.event_ids = [e["id"] for e in reply.get("events", [])]
        else:
            delivery.error = answer.text[:300]
    except httpx.HTTPError as e:
        delivery.error = f"{type(e).__name__}: {e}"
    delivery.answered_at = time.monotonic()


class Traffic:
    """One sequential sender per source, each starting a delivery every `interval_s` (later if the
    previous one is still waiting: a webhook source sends one delivery at a time per hook)."""

    def __init__(
        self, base_url: str, sources: tuple[str, ...] = ("gitlab", "minio"), interval_s: float = 0.25
    ):
        self.base_url = base_url
        self.sources = sources
        self.interval_s = interval_s
        self.deliveries: list[Delivery] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._send_forever(source)) for source in self.sources]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.accepted]

    async def answered(self, count: int, what: str, timeout_s: float = 120) -> None:
        """Wait until `count` more deliveries than now have been answered (whatever the answer)."""
        target = sum(1 for d in self.deliveries if d.answered_at) + count

        async def enough() -> bool:
            return sum(1 for d in self.deliveries if d.answered_at) >= target

        await flows.eventually(enough, f"{count} deliveries answered: {what}", timeout_s)

    def between(self, start: float, end: float) -> list[Delivery]:
        """Deliveries sent inside [start, end)."""
        return [d for d in self.deliveries if start <= d.sent_at < end]

    async def _send_forever(self, source: str) -> None:
        make = MAKERS[source]
        n = 0
        async with httpx.AsyncClient(base_url=self.base_url, timeout=HOOK_TIMEOUT_S) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                path, body, headers = make(n)
                n += 1
                delivery = Delivery(source=source, sent_at=time.monotonic())
                self.deliveries.append(delivery)
                await post(client, delivery, path, body, headers)
                next_at = max(next_at + self.interval_s, time.monotonic())
                try:
                    await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
                except TimeoutError:
                    pass
