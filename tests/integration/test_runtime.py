"""The consumer runtime's delivery promises, on both buses and both stores, and with real processes.

Nothing lost, nothing done twice: a crash anywhere between the handler's transaction, the offset commit
and the outbox publish leaves exactly one effect and one published event; failures are retried, then
parked on the DLQ, from where `mlcd dlq replay` brings them back.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus import runtime
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import partition_for
from mlcd.errors import AdapterUnavailable, PermanentError
from mlcd.store import dead_letters, outbox
from mlcd.store import inbox as inbox_rows
from mlcd.store.tables import inbox
from mlcd.store.unit_of_work import UnitOfWork
from tests.conftest import unique
from tests.support import effects, flows, processes


@pytest.fixture(autouse=True)
async def _effects_table(engine: AsyncEngine) -> None:
    await effects.create(engine)


async def write_effect(event: events.Envelope[Any], uow: UnitOfWork, *, worker: str = "") -> None:
    await effects.write_handled(uow, event, worker)


async def write_effect_and_validate(event: events.Envelope[Any], uow: UnitOfWork) -> None:
    uow.emit(
        events.DataValidated(model=event.data.model, uri=event.data.uri, rows=1, suite="s", result_uri="r")
    )
    await effects.write_handled(uow, event)


async def effect_count(engine: AsyncEngine) -> int:
    return len(await effects.rows(engine))


async def unsent_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await outbox.count_unsent(conn)


async def test_handled_event_leaves_its_effect_and_publishes_what_it_emitted(
    bus: Any, engine: AsyncEngine
) -> None:
    waker = runtime.RelayWaker()
    reader = await flows.Reader(bus, ["mlcd.data"]).start()
    handling = flows.consumer(bus, engine, [write_effect_and_validate], waker=waker)
    async with flows.running(handling, runtime.OutboxRelay(engine, bus, waker=waker)):
        await flows.publish(bus, flows.arrived())

        async def validated_published() -> bool:
            await reader.collect()
            return len(reader.of_type(events.DataValidated.type)) == 1

        await flows.eventually(validated_published, "the emitted DataValidated on mlcd.data")
    await reader.close()
    assert await effect_count(engine) == 1
    published = events.decode(reader.of_type(events.DataValidated.type)[0])
    assert isinstance(published, events.Envelope)
    assert published.id == events.derived_id(flows.arrived().id, events.DataValidated.type, "0")
    assert published.source == "mlcd/probe"


# --- (a) crash after the handler's transaction, before the offset commit -----------------------------


class _CommitCrashes:
    """A bus whose subscriptions die at their first offset commit, as a process killed there would."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    async def subscribe(self, group: str, topics: list[str]) -> Any:
        inner = await self._bus.subscribe(group, topics)

        class Crashing:
            poll = inner.poll
            lag = inner.lag
            close = inner.close

            async def commit(self, records: Any) -> None:
                raise RuntimeError("crashed between the database commit and the offset commit")

        return Crashing()


async def test_redelivery_after_a_crash_before_the_offset_commit_has_no_second_effect(
    bus: Any, engine: AsyncEngine
) -> None:
    await flows.publish(bus, flows.arrived())
    crashing = flows.consumer(_CommitCrashes(bus), engine, [write_effect])
    async with flows.running() as stop:
        with pytest.raises(RuntimeError, match="crashed between"):
            await crashing.run(stop)
    assert await effect_count(engine) == 1

    successor = flows.consumer(bus, engine, [write_effect])
    duplicates_before = _duplicates("mlcd-probe")
    async with flows.running(successor):

        async def redelivered() -> bool:
            return _duplicates("mlcd-probe") > duplicates_before

        await flows.eventually(redelivered, "the redelivered event to be skipped by the inbox")
    assert await effect_count(engine) == 1


def _duplicates(group: str) -> float:
    return REGISTRY.get_sample_value("mlcd_events_duplicate_total", {"group": group}) or 0.0


# --- (b) crash after the database commit, before the outbox was published ----------------------------


async def test_event_committed_but_never_published_is_published_once_after_restart(
    bus: Any, engine: AsyncEngine
) -> None:
    reader = await flows.Reader(bus, ["mlcd.data"]).start()
    await flows.publish(bus, flows.arrived())
    async with flows.running(
        flows.consumer(bus, engine, [write_effect_and_validate])
    ):  # no relay: it "crashed"

        async def committed() -> bool:
            return await unsent_count(engine) == 1

        await flows.eventually(committed, "the emitted event to wait in the outbox")

    for _restart in range(2):
        await runtime.OutboxRelay(engine, bus).publish_pending_quietly()

    async def published() -> bool:
        await reader.collect()
        return len(reader.of_type(events.DataValidated.type)) >= 1

    await flows.eventually(published, "the outbox row to reach the bus")
    await reader.collect()
    await reader.close()
    assert len(reader.of_type(events.DataValidated.type)) == 1
    assert await unsent_count(engine) == 0


class _DownBus(MemoryBus):
    """A broker that does not answer until `up` is set."""

    def __init__(self) -> None:
        super().__init__(events.TOPICS)
        self.up = False

    async def publish(self, records: Any) -> None:
        if not self.up:
            raise AdapterUnavailable("the broker does not answer")
        await super().publish(records)

    async def ping(self) -> None:
        if not self.up:
            raise AdapterUnavailable("the broker does not answer")


def _outbox_pending() -> float | None:
    return REGISTRY.get_sample_value("mlcd_outbox_pending")


async def test_the_outbox_backlog_shows_while_the_broker_is_down_and_empties_when_it_answers(
    engine: AsyncEngine,
) -> None:
    down = _DownBus()
    async with engine.begin() as conn:
        await outbox.add(conn, [flows.arrived(key=f"batch-{i}.csv") for i in range(3)])
    relay = runtime.OutboxRelay(engine, down, idle_poll_s=0.05)
    async with flows.running(relay):
        await flows.eventually(
            lambda: asyncio.sleep(0, _outbox_pending() == 3), "the backlog of 3 on mlcd_outbox_pending"
        )
        down.up = True
        await flows.eventually(
            lambda: asyncio.sleep(0, _outbox_pending() == 0), "mlcd_outbox_pending back to 0", 10
        )
    assert await unsent_count(engine) == 0


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_rows_behind_another_relays_slot_lock_go_out_once_it_is_released_not_at_the_idle_poll(
    engine: AsyncEngine,
) -> None:
    # Another relay's round holds every slot (its select ran before this row was written); this relay's
    # sweep finds them locked and must look again soon, not after its 5 s idle poll.
    bus = MemoryBus(events.TOPICS)
    reader = await flows.Reader(bus, ["mlcd.data"]).start()
    relay = runtime.OutboxRelay(engine, bus, idle_poll_s=5)
    async with engine.connect() as other_relay, flows.running(relay):
        async with other_relay.begin():
            await other_relay.execute(
                text("SELECT pg_advisory_xact_lock(:id, slot) FROM generate_series(0, :last) AS slot"),
                {"id": runtime.OutboxRelay._LOCK_ID, "last": outbox.SLOTS - 1},
            )
            async with engine.begin() as conn:
                await outbox.add(conn, [flows.arrived()])
            relay.waker.wake()
            await flows.eventually(
                lambda: asyncio.sleep(0, relay._contended), "a sweep to meet the locks while they are held"
            )
            assert await unsent_count(engine) == 1

        async def published() -> bool:
            await reader.collect()
            return bool(reader.of_type(events.DataArrived.type))

        await flows.eventually(published, "the row to go out once the locks are released", 2)
    await reader.close()


# --- (c) a handler that keeps failing; (d) poison records ---------------------------------------------


class _Flaky:
    """A handler that fails with `error` until told to recover, counting its calls."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0
        self.recovered = False

    async def __call__(self, event: events.Envelope[Any], uow: UnitOfWork) -> None:
        self.calls += 1
        if not self.recovered:
            raise self.error
        await effects.write_handled(uow, event)


async def _parked(engine: AsyncEngine) -> list[dead_letters.DeadLetter]:
    async with engine.connect() as conn:
        return await dead_letters.listing(conn)


async def test_failing_handler_is_retried_then_parked_and_replay_brings_it_back(
    bus: Any, engine: AsyncEngine
) -> None:
    flaky = _Flaky(AdapterUnavailable("MLflow did not answer"))
    waker = runtime.RelayWaker()
    dlq = await flows.Reader(bus, [events.DLQ_TOPIC]).start()
    event = flows.arrived()
    async with flows.running(
        flows.consumer(bus, engine, [flaky], waker=waker), runtime.OutboxRelay(engine, bus, waker=waker)
    ):
        await flows.publish(bus, event)

        async def on_the_dlq() -> bool:
            return bool(await dlq.collect())

        await flows.eventually(on_the_dlq, "the failing event on mlcd.dlq")
        assert flaky.calls == flows.FAST_RETRY.max_attempts
        parked = dlq.records[0]
        assert parked.header("ce_id") == event.id
        assert parked.header("mlcd_attempts") == "3"
        assert parked.header("mlcd_error") == "AdapterUnavailable: MLflow did not answer"
        assert parked.header("mlcd_original_topic") == "mlcd.data"
        assert parked.header("mlcd_consumer_group") == "mlcd-probe"
        [letter] = await _parked(engine)
        assert (letter.event_id, letter.attempts) == (event.id, 3)

        # What `mlcd dlq replay` asks the API to do (the CLI and the API are tested in test_journal_api).
        flaky.recovered = True
        async with engine.begin() as conn:
            assert await dead_letters.replay(conn) == 1
        waker.wake()

        async def handled() -> bool:
            return await effect_count(engine) == 1

        await flows.eventually(handled, "the replayed event to be handled")
    await dlq.close()
    assert await _parked(engine) == []


async def test_permanent_error_is_parked_without_retries(bus: Any, engine: AsyncEngine) -> None:
    flaky = _Flaky(PermanentError("policy says no"))
    async with flows.running(flows.consumer(bus, engine, [flaky])):
        await flows.publish(bus, flows.arrived())

        async def parked() -> bool:
            return len(await _parked(engine)) == 1

        await flows.eventually(parked, "the dead letter")
    [letter] = await _parked(engine)
    assert (flaky.calls, letter.attempts, letter.error) == (1, 1, "PermanentError: policy says no")


async def test_poison_records_go_to_the_dlq_and_the_consumer_goes_on(bus: Any, engine: AsyncEngine) -> None:
    garbage = events.Record(topic="mlcd.data", key=b"wine_quality", value=b"\x00not an event")
    mistyped = events.encode(flows.arrived(id="bad"))
    mistyped = events.Record(
        topic=mistyped.topic, key=mistyped.key, value=b'{"model": 1}', headers=mistyped.headers
    )
    await bus.publish([garbage, mistyped])
    await flows.publish(bus, flows.arrived(key="after-the-poison.csv"))
    async with flows.running(flows.consumer(bus, engine, [write_effect])):

        async def next_handled() -> bool:
            return await effect_count(engine) == 1

        await flows.eventually(next_handled, "the record after the poison to be handled")
    letters = sorted(await _parked(engine), key=lambda d: d.id)
    assert [d.attempts for d in letters] == [0, 0]
    assert letters[0].error.startswith("missing CloudEvents headers")
    assert letters[1].error.startswith("invalid mlcd.data.arrived.v1 payload")
    assert [r.note for r in await effects.rows(engine)] == ["after-the-poison.csv"]


async def test_a_record_of_a_type_another_group_takes_is_left_to_that_group(
    bus: Any, engine: AsyncEngine
) -> None:
    # Not decoded here (each group decodes only its own types), so not parked here even when invalid:
    # the group that takes the type parks it once.
    validated = events.encode(
        events.new_event(
            events.DataValidated(model="wine_quality", uri="u", rows=1, suite="s", result_uri="r"),
            source="mlcd/test",
        )
    )
    invalid = events.Record(
        topic=validated.topic, key=validated.key, value=b'{"model": 1}', headers=validated.headers
    )
    await bus.publish([invalid])
    await flows.publish(bus, flows.arrived(key="after.csv"))
    async with flows.running(flows.consumer(bus, engine, [write_effect])):

        async def next_handled() -> bool:
            return await effect_count(engine) == 1

        await flows.eventually(next_handled, "the record after it to be handled")
    assert await _parked(engine) == []


async def test_failure_in_the_middle_of_a_batch_keeps_the_events_around_it(
    bus: Any, engine: AsyncEngine
) -> None:
    calls: list[str] = []

    async def fails_on_the_second(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        calls.append(event.data.key)
        if event.data.key == "2.csv":
            raise PermanentError("batch 2 is unreadable")
        await effects.write_handled(uow, event)

    await flows.publish(bus, *(flows.arrived(key=f"{i}.csv") for i in (1, 2, 3)))
    async with flows.running(flows.consumer(bus, engine, [fails_on_the_second])):

        async def both_neighbours_handled() -> bool:
            return await effect_count(engine) == 2

        await flows.eventually(both_neighbours_handled, "the events before and after the failure")
    assert [r.note for r in await effects.rows(engine)] == ["1.csv", "3.csv"]
    assert calls.count("2.csv") == 1, "the failing handler runs once per attempt"
    [letter] = await _parked(engine)
    assert letter.error == "PermanentError: batch 2 is unreadable"


async def test_a_slow_handler_does_not_hold_back_what_its_batch_handled_before_it(
    bus: Any, engine: AsyncEngine
) -> None:
    first, second = flows.arrived(key="1.csv"), flows.arrived(key="2.csv")

    async def second_waits_for_the_first(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        if event.id == second.id:

            async def first_written() -> bool:
                async with engine.connect() as conn:
                    return await inbox_rows.seen(conn, "mlcd-probe", first.id)

            await flows.eventually(first_written, "the first event written while the second is handled", 10)
        uow.emit(
            events.DataValidated(
                model=event.data.model, uri=event.data.uri, rows=1, suite="s", result_uri="r"
            )
        )

    await flows.publish(bus, first, second)  # one model, one partition: one poll batch
    handling = runtime.Consumer(
        bus=bus,
        engine=engine,
        group="mlcd-probe",
        handlers={events.DataArrived.type: [second_waits_for_the_first]},
        source="mlcd/probe",
        retry=flows.FAST_RETRY,
        write_within_s=0,
    )
    async with flows.running(handling):

        async def both_written() -> bool:
            async with engine.connect() as conn:
                return await inbox_rows.seen_among(conn, "mlcd-probe", [first.id, second.id]) == {
                    first.id,
                    second.id,
                }

        await flows.eventually(both_written, "both events handled")
    assert await _parked(engine) == []
    async with engine.connect() as conn:
        assert await outbox.count_unsent(conn) == 2


# PostgreSQL only: SQLite serialises writers, so no other member can commit in the middle of a batch.
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_batch_that_loses_an_inbox_race_leaves_the_event_to_the_member_that_won(
    engine: AsyncEngine,
) -> None:
    bus = MemoryBus(events.TOPICS)
    raced = flows.arrived(key="raced.csv")

    async def another_member_wins(event: events.Envelope[Any], uow: UnitOfWork) -> None:
        if event.id == raced.id and not await _handled_elsewhere(engine, event.id):
            async with engine.begin() as other:  # the other member commits first
                await inbox_rows.record(other, "mlcd-probe", event.id, event.type)
        await effects.write_handled(uow, event)

    await flows.publish(bus, flows.arrived(key="before.csv"), raced, flows.arrived(key="after.csv"))
    async with flows.running(flows.consumer(bus, engine, [another_member_wins])):

        async def others_handled() -> bool:
            return await effect_count(engine) == 2

        await flows.eventually(others_handled, "the events the race did not concern")
    assert [r.note for r in await effects.rows(engine)] == ["before.csv", "after.csv"]
    assert await _parked(engine) == []


async def _handled_elsewhere(engine: AsyncEngine, event_id: str) -> bool:
    async with engine.connect() as conn:
        return await inbox_rows.seen(conn, "mlcd-probe", event_id)


# --- (e) two consumers in one group -------------------------------------------------------------------


def _models_on_every_partition(partitions: int) -> list[str]:
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        found.setdefault(partition_for(f"model-{n}".encode(), partitions), f"model-{n}")
        n += 1
    return [found[p] for p in range(partitions)]


async def test_two_consumers_in_a_group_split_partitions_and_keep_each_models_order(
    bus: Any, engine: AsyncEngine
) -> None:
    models = _models_on_every_partition(bus.partitions)
    first = flows.consumer(bus, engine, [functools.partial(write_effect, worker="first")])
    second = flows.consumer(bus, engine, [functools.partial(write_effect, worker="second")])
    async with flows.running(first, second):
        # Warm up until both members hold partitions, so no rebalance happens during the real run.
        round_ = 0

        async def both_members_handling() -> bool:
            nonlocal round_
            round_ += 1
            if round_ % 10 == 1:
                await flows.publish(bus, *(flows.arrived(m, f"warmup-{round_}") for m in models))
            rows = await effects.rows(engine)
            return {r.worker for r in rows} == {"first", "second"}

        await flows.eventually(both_members_handling, "both group members to be assigned partitions", 60)
        warmup = await effect_count(engine)
        await flows.publish(bus, *(flows.arrived(m, f"seq-{i:03d}") for i in range(25) for m in models))

        async def all_handled() -> bool:
            rows = await effects.rows(engine)
            return sum(r.note.startswith("seq-") for r in rows) == 25 * len(models)

        await flows.eventually(all_handled, "every event to be handled", 60)
    rows = [r for r in (await effects.rows(engine))[warmup:] if r.note.startswith("seq-")]
    for model in models:
        assert [r.note for r in rows if r.model == model] == [f"seq-{i:03d}" for i in range(25)]
    assert {r.worker for r in rows} == {"first", "second"}
    assert len({(r.model, r.worker) for r in rows}) == len(models), "a model's events moved between members"


# --- real processes: SIGKILL at the crash points, SIGTERM drain ----------------------------------------


@pytest.fixture
def namespace() -> str:
    return unique("w") + "."


@pytest.fixture
def worker_env(store_url: str, kafka_bootstrap: str, namespace: str) -> dict[str, str]:
    return {
        "MLCD_DATABASE_URL": store_url,
        "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MLCD_KAFKA_NAMESPACE": namespace,
        "MLCD_KAFKA_SESSION_TIMEOUT_S": "6",
        "MLCD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
        "PYTHONPATH": os.pathsep.join([str(flows.REPO), str(flows.REPO / "services")]),
    }


class Workers:
    """Starts `tests.support.worker` processes and stops every one of them at the end."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        log_path = self.folder / f"worker-{len(self.started)}.log"
        worker = processes.start(
            [sys.executable, "-m", "tests.support.worker"],
            log_path,
            env={**self.env, **extra},
            cwd=flows.REPO,
        )
        self.started.append(worker)
        return worker

    @staticmethod
    def log(worker: subprocess.Popen[bytes]) -> str:
        return Path(worker.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    async def wait_for_line(self, worker: subprocess.Popen[bytes], text: str, timeout_s: float = 60) -> None:
        async def logged() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited with {worker.returncode}: {self.log(worker)[-2000:]}")
            return text in self.log(worker)

        await flows.eventually(logged, f"worker log line {text!r}", timeout_s)

    def stop_all(self) -> None:
        for worker in self.started:
            processes.stop(worker)


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    started = Workers(worker_env, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
async def kafka(kafka_bootstrap: str, namespace: str) -> Any:
    bus = KafkaBus(
        kafka_bootstrap, events.TOPICS, namespace=namespace, session_timeout_s=6, heartbeat_interval_s=1
    )
    await bus.start()
    yield bus
    await bus.stop()


async def _exit_code(worker: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    return await asyncio.to_thread(worker.wait, timeout_s)


async def test_worker_killed_before_its_offset_commit_is_redelivered_without_a_second_effect(
    kafka: KafkaBus, engine: AsyncEngine, workers: Workers
) -> None:
    crashing = workers.start(WORKER_FAULT="kill_before_offset_commit")
    await flows.publish(kafka, flows.arrived())
    assert await _exit_code(crashing) == -signal.SIGKILL
    assert await effect_count(engine) == 1

    successor = workers.start()
    await workers.wait_for_line(successor, "duplicate skipped")
    successor.send_signal(signal.SIGTERM)
    assert await _exit_code(successor) == 0
    assert await effect_count(engine) == 1


async def test_worker_killed_before_publishing_its_outbox_publishes_once_after_restart(
    kafka: KafkaBus, engine: AsyncEngine, workers: Workers
) -> None:
    reader = await flows.Reader(kafka, ["mlcd.data"]).start()
    crashing = workers.start(WORKER_FAULT="kill_before_publish")
    await flows.publish(kafka, flows.arrived())
    assert await _exit_code(crashing) == -signal.SIGKILL
    assert await unsent_count(engine) == 1

    successor = workers.start()

    async def published() -> bool:
        await reader.collect()
        return await unsent_count(engine) == 0 and len(reader.of_type(events.DataValidated.type)) >= 1

    await flows.eventually(published, "the restarted worker's relay to publish the outbox", 60)
    successor.send_signal(signal.SIGTERM)
    assert await _exit_code(successor) == 0
    await reader.collect()
    await reader.close()
    assert len(reader.of_type(events.DataValidated.type)) == 1
    assert await effect_count(engine) == 1


async def test_sigterm_drains_the_in_flight_handler_and_exits_zero(
    kafka: KafkaBus, kafka_bootstrap: str, namespace: str, engine: AsyncEngine, workers: Workers
) -> None:
    worker = workers.start(WORKER_HANDLER_SECONDS="2")
    event = flows.arrived()
    await flows.publish(kafka, event)
    await workers.wait_for_line(worker, "probe handler started")
    worker.send_signal(signal.SIGTERM)
    assert await _exit_code(worker) == 0
    assert [r.event_id for r in await effects.rows(engine)] == [event.id]
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(inbox)) == 1
    assert await unsent_count(engine) == 0, "the relay flushed the emitted event before exiting"
    assert await _committed_offsets(kafka_bootstrap, namespace + "mlcd-probe", namespace + "mlcd.data") == 1


async def _committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets on `topic`, summed over its partitions (asked without joining)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(topic) or set()
        offsets = [await reader.committed(TopicPartition(topic, p)) for p in partitions]
    finally:
        await reader.stop()
    return sum(o for o in offsets if o is not None and o > 0)
