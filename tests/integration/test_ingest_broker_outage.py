"""A hung broker (SIGSTOP): deliveries are still accepted, spooled, and relayed in order once it wakes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.runtime import OutboxRelay
from mlcd.store import outbox
from tests.support import ingest_app
from tests.support.ingest_app import FIXTURES, GITLAB_SECRET

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
async def kafka(own_broker: tuple[str, int]) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(own_broker[0], events.TOPICS, request_timeout_s=5)
    await bus.start()
    yield bus
    await bus.stop()


async def test_deliveries_during_a_broker_hang_are_accepted_and_relayed_in_order_without_loss(
    own_broker: tuple[str, int], kafka: KafkaBus, engine: AsyncEngine
) -> None:
    body = (FIXTURES / "gitlab_push.json").read_bytes()
    app = ingest_app.build(ingest_app.settings(ingest_timeout_s=1.0), kafka, engine)
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as http:

        async def deliver(key: str) -> httpx.Response:
            headers = {"X-Gitlab-Token": GITLAB_SECRET, "X-Gitlab-Event": "Push Hook", "Idempotency-Key": key}
            return await http.post("/hooks/gitlab", content=body, headers=headers)

        answers.append(await deliver("before-hang"))
        os.kill(own_broker[1], signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(4):
                answers.append(await deliver(f"during-hang-{i}"))
            hung_for = time.monotonic() - started
        finally:
            os.kill(own_broker[1], signal.SIGCONT)
    assert [a.status_code for a in answers] == [202] * 5
    assert [a.json()["status"] for a in answers] == ["published"] + ["spooled"] * 4
    assert hung_for < 5, "only the first delivery during the hang waits for the broker timeout"

    relay = OutboxRelay(engine, kafka)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await relay.publish_pending_quietly()
        async with engine.connect() as conn:
            if await outbox.count_unsent(conn) == 0:
                break
    async with engine.connect() as conn:
        assert await outbox.count_unsent(conn) == 0, "the relay published the spooled events"

    sent_ids = [a.json()["events"][0]["id"] for a in answers]
    reader = KafkaBus(own_broker[0], events.TOPICS, request_timeout_s=30)
    subscription = await reader.subscribe("test-outage-reader", ["mlcd.git"])
    try:
        seen: list[str] = []
        while set(seen) < set(sent_ids) and time.monotonic() < deadline:
            seen += [r.header("ce_id") or "" for r in await subscription.poll(100, 1.0)]
    finally:
        await reader.stop()
    first_seen = list(dict.fromkeys(seen))
    assert first_seen == sent_ids, "every event arrives, in the order the deliveries were accepted"
