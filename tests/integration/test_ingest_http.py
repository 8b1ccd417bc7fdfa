"""Webhook endpoints over HTTP: every status code, redelivery dedupe, parking, broker and store outages."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import Bus
from mlcd.bus.runtime import OutboxRelay
from mlcd.errors import AdapterUnavailable
from mlcd.store import dead_letters, migrate, outbox
from mlcd.store.database import create_engine
from tests.support import ingest_app
from tests.support.ingest_app import FIXTURES, GITLAB_SECRET, MINIO_TOKEN


class SwitchableBus(MemoryBus):
    """The in-process bus with a switch that makes the broker unreachable."""

    def __init__(self) -> None:
        super().__init__(events.TOPICS)
        self.down = False

    async def publish(self, records: Sequence[events.Record]) -> None:
        if self.down:
            raise AdapterUnavailable("broker unreachable (switched off by the test)")
        await super().publish(records)


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def push_headers(key: str, kind: str = "Push Hook") -> dict[str, str]:
    return {"X-Gitlab-Token": GITLAB_SECRET, "X-Gitlab-Event": kind, "Idempotency-Key": key}


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")  # type: ignore[arg-type]


async def git_records(bus: Bus, group: str, expected: int) -> list[events.Record]:
    """The records on mlcd.git: waits for `expected`, then briefly for any that should not be there."""
    subscription = await bus.subscribe(group, ["mlcd.git"])
    try:
        records: list[events.Record] = []
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(await subscription.poll(100, 0.5))
        records.extend(await subscription.poll(100, 0.3))
        return records
    finally:
        await subscription.close()


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def test_push_is_published_once_and_its_redelivery_answers_200_without_a_second_event(
    engine: AsyncEngine, bus: Bus
) -> None:
    async with client(ingest_app.build(ingest_app.settings(), bus, engine)) as http:
        first = await http.post(
            "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers("k-1")
        )
        again = await http.post(
            "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers("k-1")
        )
    assert first.status_code == 202
    assert first.json()["status"] == "published"
    assert first.json()["events"][0]["type"] == "mlcd.git.pushed.v1"
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    records = await git_records(bus, "test-push-once", 1)
    assert [r.header("ce_id") for r in records] == [first.json()["events"][0]["id"]]
    async with engine.connect() as conn:
        journal = await outbox.journal(conn, model="wine_quality")
    assert [entry["data"]["ref"] for _, entry in journal] == ["refs/heads/main"]


@pytest.mark.parametrize(
    ("path", "headers", "problem"),
    [
        ("/hooks/gitlab", {"X-Gitlab-Token": "wrong", "X-Gitlab-Event": "Push Hook"}, "X-Gitlab-Token"),
        ("/hooks/gitlab", {"X-Gitlab-Event": "Push Hook"}, "X-Gitlab-Token"),
        ("/hooks/minio", {"Authorization": "Bearer wrong"}, "bearer"),
        ("/hooks/alertmanager", {}, "bearer"),
        ("/hooks/mlflow", {"X-MLflow-Signature": "v1,AAAA"}, "missing"),
    ],
)
async def test_wrong_or_missing_secrets_are_refused_with_401(
    sqlite_engine: AsyncEngine, path: str, headers: dict[str, str], problem: str
) -> None:
    async with client(
        ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), sqlite_engine)
    ) as http:
        answer = await http.post(path, content=b"{}", headers=headers)
    assert answer.status_code == 401
    assert problem in answer.json()["error"]


async def test_a_source_with_no_secret_configured_is_closed(sqlite_engine: AsyncEngine) -> None:
    config = ingest_app.settings(minio_webhook_token=None)
    async with client(ingest_app.build(config, MemoryBus(events.TOPICS), sqlite_engine)) as http:
        answer = await http.post("/hooks/minio", content=b"{}", headers={"Authorization": "Bearer "})
    assert answer.status_code == 401
    assert "closed" in answer.json()["error"]


async def test_body_over_the_limit_is_refused_with_413(sqlite_engine: AsyncEngine) -> None:
    config = ingest_app.settings(webhook_max_body_bytes=1000)
    async with client(ingest_app.build(config, MemoryBus(events.TOPICS), sqlite_engine)) as http:
        answer = await http.post("/hooks/gitlab", content=b" " * 1001, headers=push_headers("k-big"))
    assert answer.status_code == 413
    assert "1000 bytes" in answer.json()["error"]


async def test_unparseable_authenticated_delivery_is_accepted_parked_raw_and_journaled(
    sqlite_engine: AsyncEngine,
) -> None:
    truncated = fixture_body("gitlab_push.json")[:200]
    async with client(
        ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), sqlite_engine)
    ) as http:
        answer = await http.post("/hooks/gitlab", content=truncated, headers=push_headers("k-bad"))
        again = await http.post("/hooks/gitlab", content=truncated, headers=push_headers("k-bad"))
    assert (answer.status_code, answer.json()["status"]) == (202, "parked")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    async with sqlite_engine.connect() as conn:
        [parked] = await dead_letters.listing(conn)
        pending = await outbox.unsent(conn, 10)
    assert parked.topic == "mlcd.ingest" and "not JSON" in parked.error
    dlq, journal = (p.record for p in pending)
    assert dlq.topic == events.DLQ_TOPIC and dlq.value == truncated
    assert "not JSON" in (dlq.header("mlcd_error") or "")
    assert dlq.header("x-gitlab-token") is None, "secrets are not kept with parked deliveries"
    assert journal.header("ce_type") == events.DeliveryIgnored.type


async def test_event_kinds_mlcd_does_not_act_on_are_accepted_and_journaled(
    sqlite_engine: AsyncEngine,
) -> None:
    async with client(
        ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), sqlite_engine)
    ) as http:
        answer = await http.post(
            "/hooks/gitlab",
            content=b'{"object_kind": "wiki_page"}',
            headers=push_headers("k-wiki", "Wiki Page Hook"),
        )
    assert answer.status_code == 202
    assert answer.json()["events"][0]["type"] == events.DeliveryIgnored.type


async def test_broker_outage_spools_to_the_outbox_and_the_relay_publishes_in_order(
    engine: AsyncEngine,
) -> None:
    bus = SwitchableBus()
    bus.down = True
    keys = [f"k-outage-{i}" for i in range(5)]
    async with client(ingest_app.build(ingest_app.settings(), bus, engine)) as http:
        answers = [
            await http.post(
                "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers(key)
            )
            for key in keys[:3]
        ]
        bus.down = False
        # The broker is back, but earlier events for this model still wait: these queue behind them.
        answers += [
            await http.post(
                "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers(key)
            )
            for key in keys[3:]
        ]
        assert [a.status_code for a in answers] == [202] * 5
        assert {a.json()["status"] for a in answers} == {"spooled"}
        redelivered = await http.post(
            "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers(keys[0])
        )
    assert redelivered.status_code == 200
    assert await OutboxRelay(engine, bus).publish_pending() == 5
    records = await git_records(bus, "test-outage", 5)
    assert [r.header("ce_id") for r in records] == [a.json()["events"][0]["id"] for a in answers]


async def test_store_outage_with_the_broker_up_still_publishes(tmp_path: Path) -> None:
    unreachable = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'mlcd.db'}")
    bus = MemoryBus(events.TOPICS)
    async with client(ingest_app.build(ingest_app.settings(), bus, unreachable)) as http:
        answer = await http.post(
            "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers("k")
        )
    await unreachable.dispose()
    assert (answer.status_code, answer.json()["status"]) == (202, "published")
    assert len(await git_records(bus, "test-store-outage", 1)) == 1


async def test_broker_and_store_both_down_answers_503_with_retry_after(tmp_path: Path) -> None:
    unreachable = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'mlcd.db'}")
    bus = SwitchableBus()
    bus.down = True
    async with client(ingest_app.build(ingest_app.settings(), bus, unreachable)) as http:
        answer = await http.post(
            "/hooks/gitlab", content=fixture_body("gitlab_push.json"), headers=push_headers("k")
        )
        parked = await http.post("/hooks/gitlab", content=b"{oops", headers=push_headers("k-bad"))
    await unreachable.dispose()
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    assert "neither" in answer.json()["error"]
    assert parked.status_code == 503


async def test_minio_upload_notification_becomes_data_arrived(sqlite_engine: AsyncEngine) -> None:
    bus = MemoryBus(events.TOPICS)
    async with client(ingest_app.build(ingest_app.settings(), bus, sqlite_engine)) as http:
        answer = await http.post(
            "/hooks/minio",
            content=fixture_body("minio_put_encoded_key.json"),
            headers={"Authorization": f"Bearer {MINIO_TOKEN}"},
        )
        again = await http.post(
            "/hooks/minio",
            content=fixture_body("minio_put_encoded_key.json"),
            headers={"Authorization": f"Bearer {MINIO_TOKEN}"},
        )
    assert answer.status_code == 202 and again.status_code == 200
    assert answer.json()["events"] == [
        {"id": answer.json()["events"][0]["id"], "type": events.DataArrived.type, "model": "wine_quality"}
    ]


async def test_alertmanager_notification_fires_the_model_alert(sqlite_engine: AsyncEngine) -> None:
    async with client(
        ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), sqlite_engine)
    ) as http:
        answer = await http.post(
            "/hooks/alertmanager",
            content=fixture_body("alertmanager_firing.json"),
            headers={"Authorization": f"Bearer {ingest_app.ALERTMANAGER_TOKEN}"},
        )
    assert answer.status_code == 202
    assert [e["type"] for e in answer.json()["events"]] == [
        events.AlertFired.type,
        events.DeliveryIgnored.type,
    ]


async def test_mlflow_delivery_signed_by_mlflow_itself_is_accepted_and_a_stale_one_refused(
    sqlite_engine: AsyncEngine,
) -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    payload = json.dumps(json.loads(fixture_body("mlflow_model_version_created.json")))

    def headers(delivery_id: str, timestamp: int) -> dict[str, str]:
        signature = _generate_hmac_signature(ingest_app.MLFLOW_SECRET, delivery_id, str(timestamp), payload)
        return {
            "Content-Type": "application/json",
            "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": str(timestamp),
            "X-MLflow-Signature": signature,
        }

    async with client(
        ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), sqlite_engine)
    ) as http:
        fresh = await http.post("/hooks/mlflow", content=payload, headers=headers("d-1", int(time.time())))
        stale = await http.post(
            "/hooks/mlflow", content=payload, headers=headers("d-2", int(time.time()) - 3600)
        )
    assert fresh.status_code == 202
    assert fresh.json()["events"][0]["type"] == events.CandidateRegistered.type
    assert stale.status_code == 401 and "replay" in stale.json()["error"]


async def test_signed_gitlab_delivery_needs_a_valid_signature_when_a_signing_token_is_set(
    sqlite_engine: AsyncEngine,
) -> None:
    import base64
    import hashlib
    import hmac

    key = b"k" * 32
    config = ingest_app.settings(gitlab_signing_token="whsec_" + base64.b64encode(key).decode())
    body = fixture_body("gitlab_push.json")
    ts = str(int(time.time()))
    signature = base64.b64encode(
        hmac.new(key, f"msg_1.{ts}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    signed = {**push_headers("k-signed"), "webhook-id": "msg_1", "webhook-timestamp": ts}
    async with client(ingest_app.build(config, MemoryBus(events.TOPICS), sqlite_engine)) as http:
        good = await http.post(
            "/hooks/gitlab", content=body, headers={**signed, "webhook-signature": f"v1,{signature}"}
        )
        bad = await http.post(
            "/hooks/gitlab", content=body, headers={**signed, "webhook-signature": "v1,AAAA"}
        )
    assert good.status_code == 202
    assert bad.status_code == 401
