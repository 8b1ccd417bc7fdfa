"""A broker that hangs (SIGSTOP for 20 s) under steady webhook traffic, with `mlcd serve ingest` in its own
process and a PostgreSQL of its own: every delivery is still answered 2xx within the hook's timeout
(spooled to the outbox), and once the broker wakes everything accepted reaches the bus in order per key,
each event once but for the one in flight at the freeze (the broker still writes that request, and the
relay sends the spooled copy: without an idempotent producer it is in doubt). The in-process twin,
tests/integration/test_ingest_broker_outage.py, checks the same spool on both stores in a few seconds;
this one checks it end to end, at a steady rate, for a long hang.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, unique
from tests.support import flows
from tests.support.ingest_app import GITLAB_SECRET, MINIO_TOKEN
from tests.support.mlcd_service import ServiceProcess
from tests.support.postgres_server import PostgresServer
from tests.support.topic_tail import TopicTail
from tests.support.webhook_traffic import HOOK_TIMEOUT_S, Delivery, Traffic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# The broker stays frozen until this many deliveries were answered meanwhile: about 20 s at the senders' pace
# (two sources, one delivery each per 0.25 s), and proof that ingest kept accepting all along.
HANG_DELIVERIES = 150
STEADY_DELIVERIES = 16  # traffic before the hang and after the wake-up


@pytest.fixture
def ingest(
    own_broker: tuple[str, int], own_postgres: PostgresServer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    env = {
        "MLCD_HOME": str(tmp_path / "home"),
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        "MLCD_DATABASE_URL": own_postgres.url,
        "MLCD_KAFKA_BOOTSTRAP": own_broker[0],
        "MLCD_KAFKA_NAMESPACE": unique("hang") + ".",
        "MLCD_KAFKA_REQUEST_TIMEOUT_S": "5",
        "MLCD_GITLAB_WEBHOOK_SECRET": GITLAB_SECRET,
        "MLCD_MINIO_WEBHOOK_TOKEN": MINIO_TOKEN,
    }
    service = ServiceProcess("ingest", env, tmp_path)
    try:
        yield service.start()
    finally:
        service.stop()


async def test_hung_broker_deliveries_are_answered_2xx_and_reach_the_bus_in_order_once_it_wakes(
    own_broker: tuple[str, int], ingest: ServiceProcess, record_property: Callable[[str, object], None]
) -> None:
    bootstrap, broker_pid = own_broker
    namespace = ingest.env["MLCD_KAFKA_NAMESPACE"]
    tail = await TopicTail(bootstrap, [namespace + "mlcd.git", namespace + "mlcd.data"]).start()
    try:
        async with Traffic(ingest.base_url, ("gitlab", "minio"), interval_s=0.25) as traffic:
            await traffic.answered(STEADY_DELIVERIES, "before the hang")
            os.kill(broker_pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                await traffic.answered(HANG_DELIVERIES, "while the broker is frozen")
            finally:
                os.kill(broker_pid, signal.SIGCONT)
            woke_at = time.monotonic()
            await traffic.answered(STEADY_DELIVERIES, "after the wake-up")

        deliveries = traffic.deliveries
        failed = [d for d in deliveries if not d.accepted]
        assert not failed, f"{len(failed)} of {len(deliveries)} deliveries not answered 2xx: {failed[:3]}"
        slowest = max(d.answered_at - d.sent_at for d in deliveries)
        assert slowest < HOOK_TIMEOUT_S
        during_hang = traffic.between(frozen_at, woke_at)
        assert len(during_hang) >= HANG_DELIVERIES, "the senders kept going through the hang"
        assert {d.status for d in during_hang} == {"spooled"}, "with the broker hung, the outbox took them"

        accepted_ids = [i for d in deliveries for i in d.event_ids]
        assert len(set(accepted_ids)) == len(accepted_ids)
        spooled_ids = [i for d in deliveries if d.status == "spooled" for i in d.event_ids]

        async def all_arrived() -> bool:
            return set(accepted_ids) <= tail.ids()

        await flows.eventually(all_arrived, "every accepted event on the bus", timeout_s=90)
        recovery_s = max(tail.first_arrival(i) or 0.0 for i in spooled_ids) - woke_at
    finally:
        await tail.stop()

    # The one delivery per sender that was being published when the broker froze is in doubt: the broker
    # holds its request and writes it on waking, after ingest had spooled it. Nothing else may repeat.
    in_doubt = {i for source in traffic.sources for i in _first_spooled(deliveries, source).event_ids}
    duplicates = {i: n for i, n in tail.count_by_id().items() if n > 1}
    assert set(duplicates) <= in_doubt and max(duplicates.values(), default=1) <= 2, (
        f"events published more than once: {duplicates} (in doubt: {in_doubt})"
    )
    accepted_order: dict[tuple[str, bytes | None], list[str]] = defaultdict(list)
    key_of = {r.event_id: (r.topic, r.key) for r in tail.records}
    for delivery in sorted(deliveries, key=lambda d: d.answered_at):
        for event_id in delivery.event_ids:
            accepted_order[key_of[event_id]].append(event_id)
    on_the_bus = {key: list(dict.fromkeys(ids)) for key, ids in tail.sequence_by_key().items()}
    assert on_the_bus == accepted_order, "per key, the bus holds the events in the order they were accepted"

    figures = {
        "deliveries": len(deliveries),
        "hang_s": round(woke_at - frozen_at, 1),
        "accepted_during_hang": len(during_hang),
        "spooled": len(spooled_ids),
        "published_twice": len(duplicates),
        "slowest_answer_s": round(slowest, 2),
        "recovery_s": round(recovery_s, 2),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"broker hang: {figures}")


def _first_spooled(deliveries: list[Delivery], source: str) -> Delivery:
    return next(d for d in deliveries if d.source == source and d.status == "spooled")
