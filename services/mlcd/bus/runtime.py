"""The consumer runtime: handlers by event type, inbox dedupe, outbox, retries, the DLQ, the relay.

A poll batch is handled in one database transaction (inbox read once, inbox and outbox rows written
together); when one event's handler fails, the events before it are committed without it, and offsets
are committed only after that transaction. A failing event is retried with bounded exponential backoff
in its own transaction, then parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, logs, metrics
from mlcd.bus.port import Bus, Subscription
from mlcd.errors import AdapterUnavailable, PermanentError
from mlcd.events import Record
from mlcd.store import dead_letters, inbox, outbox
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)

Handler = Callable[[events.Envelope[Any], UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Delay before attempt number `attempt + 1` (attempt counts from 1)."""
        return float(min(self.max_s, self.initial_s * 2 ** (attempt - 1)))


class RelayWaker:
    """Lets a committed unit of work tell the relay there is something to publish now."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            pass
        self._event.clear()


@asynccontextmanager
async def unit_of_work(
    engine: AsyncEngine, source: str, waker: RelayWaker | None = None
) -> AsyncIterator[UnitOfWork]:
    """A unit of work outside any consumer (HTTP endpoints, timers); commits on a clean exit."""
    async with engine.begin() as conn:
        uow = UnitOfWork(conn, source)
        yield uow
        await uow.flush()
    if waker is not None:
        waker.wake()


class _Batch:
    """Inbox and outbox rows of a poll batch's handled events, written together in its transaction.

    Round trips per event are what bound throughput on PostgreSQL: the inbox is read once for the whole
    batch and its rows and the emitted events are inserted in two statements at the end.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._handled: list[tuple[str, str]] = []
        self._emitted: list[events.Envelope[Any]] = []

    def handled(self, event: events.Envelope[Any], uow: UnitOfWork) -> None:
        self.seen.add(event.id)
        self._handled.append((event.id, event.type))
        self._emitted.extend(uow.emitted)
        uow.emitted = []

    async def write(self, conn: AsyncConnection, group: str) -> None:
        if self._emitted:
            await outbox.add(conn, self._emitted)
        await inbox.record_many(conn, group, self._handled)
        self._handled, self._emitted = [], []


def _event_ids(records: Sequence[Record]) -> list[str]:
    return [event_id for event_id in (r.header("ce_id") for r in records) if event_id]


class _Failure(Exception):
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _FailedAt(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        self.index = index
        self.error = error


class Consumer:
    """One consumer group: polls, dispatches to the handlers of each event type, commits."""

    def __init__(
        self,
        *,
        bus: Bus,
        engine: AsyncEngine,
        group: str,
        handlers: Mapping[str, Sequence[Handler]],
        source: str,
        retry: RetryPolicy = RetryPolicy(),
        waker: RelayWaker | None = None,
        max_batch: int = 100,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.group = group
        self.handlers = handlers
        self.source = source
        self.retry = retry
        self.waker = waker
        self.max_batch = max_batch
        self.topics = sorted({events.PAYLOAD_TYPES[t].topic() for t in handlers})
        self._subscription: Subscription | None = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first."""
        self._subscription = await self.bus.subscribe(self.group, self.topics)
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    records = await self._subscription.poll(self.max_batch, 0.2)
                except AdapterUnavailable as e:
                    log.warning("poll failed; retrying", group=self.group, error=str(e))
                    await asyncio.sleep(1)
                    continue
                for (topic, partition), lag in self._subscription.lag().items():
                    metrics.CONSUMER_LAG.labels(self.group, topic, str(partition)).set(lag)
                if records:
                    await self.handle_batch(records)
        finally:
            await self._subscription.close()

    async def handle_batch(self, records: Sequence[Record]) -> None:
        assert self._subscription is not None
        pending = list(records)
        while pending:
            done, failed = await self._handle_in_one_transaction(pending)
            await self._subscription.commit(done)
            if self.waker:
                self.waker.wake()
            if failed is None:
                return
            record, error = failed
            await self._retry_then_park(record, error)
            await self._subscription.commit([record])
            if self.waker:
                self.waker.wake()
            pending = pending[len(done) + 1 :]

    async def _handle_in_one_transaction(
        self, records: Sequence[Record]
    ) -> tuple[list[Record], tuple[Record, BaseException] | None]:
        """Handle a batch in one transaction; returns what was committed and the first failure, if any.

        No savepoints (each costs two round trips per event): when a handler fails, the transaction is
        rolled back and the events before it are handled again and committed; the failing one is left
        to `_retry_then_park`. Handlers are idempotent, so running one twice is safe.
        """
        limit, failure = len(records), None
        while limit:
            try:
                await self._handle_all(records[:limit])
                break
            except _FailedAt as failed:
                limit, failure = failed.index, (records[failed.index], failed.error)
            except IntegrityError:
                return await self._handle_after_lost_race(records)
        return list(records[:limit]), failure

    async def _handle_all(self, records: Sequence[Record]) -> None:
        batch = _Batch()
        async with self.engine.begin() as conn:
            batch.seen = await inbox.seen_among(conn, self.group, _event_ids(records))
            for index, record in enumerate(records):
                try:
                    await self._handle_one(conn, record, attempt=1, batch=batch)
                except _Failure as failure:
                    raise _FailedAt(index, failure.error) from failure
            await batch.write(conn, self.group)

    async def _handle_after_lost_race(
        self, records: Sequence[Record]
    ) -> tuple[list[Record], tuple[Record, BaseException] | None]:
        # Another member handled one of these events meanwhile (a rebalance) and nothing was committed.
        # Event by event, the inbox row inside each savepoint turns that one into a skip.
        log.warning("batch lost an inbox race; handling it event by event", group=self.group)
        done: list[Record] = []
        async with self.engine.begin() as conn:
            for record in records:
                try:
                    async with conn.begin_nested():
                        await self._handle_one(conn, record, attempt=1)
                except _Failure as failure:
                    return done, (record, failure.error)
                done.append(record)
        return done, None

    async def _retry_then_park(self, record: Record, error: BaseException) -> None:
        attempt = 1
        while not isinstance(error, PermanentError) and attempt < self.retry.max_attempts:
            await asyncio.sleep(self.retry.delay(attempt))
            attempt += 1
            try:
                async with self.engine.begin() as conn:
                    await self._handle_one(conn, record, attempt=attempt)
                return
            except _Failure as failure:
                error = failure.error
        async with self.engine.begin() as conn:
            await self._park(conn, record, f"{type(error).__name__}: {error}", attempt)

    async def _handle_one(
        self, conn: AsyncConnection, record: Record, *, attempt: int, batch: _Batch | None = None
    ) -> None:
        """Handle one event; with a `batch`, its inbox and outbox rows are written with the batch's."""
        decoded = events.decode(record)
        if isinstance(decoded, events.DecodeError):
            await self._park(conn, record, decoded.reason, attempts=0)
            return
        handlers = self.handlers.get(decoded.type, ())
        with logs.bound(event_id=decoded.id, event_type=decoded.type, model=decoded.key, group=self.group):
            if batch is not None:
                duplicate = decoded.id in batch.seen
            else:
                duplicate = bool(handlers) and await inbox.seen(conn, self.group, decoded.id)
            if not handlers or duplicate:
                if handlers:
                    metrics.EVENTS_DUPLICATE.labels(self.group).inc()
                    log.info("duplicate skipped")
                return
            started = time.perf_counter()
            uow = UnitOfWork(conn, self.source, cause=decoded)
            try:
                for handler in handlers:
                    await handler(decoded, uow)
                if batch is not None:
                    batch.handled(decoded, uow)
                else:
                    await uow.flush()
                    await inbox.record(conn, self.group, decoded.id, decoded.type)
            except Exception as e:  # any handler failure is retried or parked, never fatal to the loop
                metrics.EVENTS_FAILED.labels(self.group, decoded.type).inc()
                log.warning("handler failed", attempt=attempt, error=f"{type(e).__name__}: {e}")
                raise _Failure(e) from e
            metrics.HANDLER_SECONDS.labels(self.group, decoded.type).observe(time.perf_counter() - started)
            metrics.EVENTS_CONSUMED.labels(self.group, decoded.type).inc()
            log.info("handled", seconds=round(time.perf_counter() - started, 4))

    async def _park(self, conn: AsyncConnection, record: Record, error: str, attempts: int) -> None:
        event_type = record.header("ce_type") or "undecodable"
        metrics.EVENTS_DEAD_LETTERED.labels(self.group, event_type).inc()
        log.error("dead-lettered", group=self.group, topic=record.topic, reason=error, attempts=attempts)
        await dead_letters.park(conn, self.group, record, error, attempts)
        await outbox.add_raw(conn, dead_letter_record(record, self.group, error, attempts))


def dead_letter_record(record: Record, group: str, error: str, attempts: int) -> Record:
    """The record as parked on `mlcd.dlq`: original headers plus why, where from, how many tries."""
    headers = [
        *record.headers,
        ("mlcd_error", error.encode()),
        ("mlcd_attempts", str(attempts).encode()),
        ("mlcd_original_topic", record.topic.encode()),
        ("mlcd_original_partition", str(record.partition).encode()),
        ("mlcd_original_offset", str(record.offset).encode()),
        ("mlcd_consumer_group", group.encode()),
    ]
    return Record(topic=events.DLQ_TOPIC, key=record.key, value=record.value, headers=tuple(headers))


class OutboxRelay:
    """Publishes outbox rows in order and marks them sent; one relay at a time per database."""

    _LOCK_ID = 0x6D6C6372  # "mlcr"

    def __init__(
        self,
        engine: AsyncEngine,
        bus: Bus,
        *,
        waker: RelayWaker | None = None,
        batch: int = 500,
        idle_poll_s: float = 0.5,
        retention: timedelta = timedelta(days=30),
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.waker = waker or RelayWaker()
        self.batch = batch
        self.idle_poll_s = idle_poll_s
        self.retention = retention

    async def run(self, stop: asyncio.Event) -> None:
        last_purge = 0.0
        while not stop.is_set():
            try:
                published = await self.publish_pending()
            except AdapterUnavailable as e:
                log.warning("relay cannot reach the broker; rows stay in the outbox", error=str(e))
                await self._until_broker_answers(stop)
                continue
            if time.monotonic() - last_purge > 3600:
                await self._purge()
                last_purge = time.monotonic()
            if published < self.batch:
                await self.waker.wait(self.idle_poll_s)
        await self.publish_pending_quietly()

    async def publish_pending_quietly(self) -> None:
        """Flush the whole outbox (a stopping relay must not leave full batches behind)."""
        try:
            while await self.publish_pending() >= self.batch:
                pass
        except AdapterUnavailable as e:
            log.warning("relay stopped with rows still in the outbox", error=str(e))

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows; returns how many were published."""
        async with self.engine.begin() as conn:
            if not await self._take_lock(conn):
                return 0
            pending = await outbox.unsent(conn, self.batch)
            if not pending:
                metrics.OUTBOX_PENDING.set(0)
                return 0
            await self.bus.publish([p.record for p in pending])
            await outbox.mark_sent(conn, [p.seq for p in pending])
        for p in pending:
            metrics.EVENTS_PUBLISHED.labels(p.record.header("ce_type") or "raw").inc()
        return len(pending)

    async def _until_broker_answers(self, stop: asyncio.Event) -> None:
        # A publish that timed out is in doubt: a hung broker still holds the request and writes it when it
        # wakes. Sending the rows again at every retry would put one more copy on the bus each time, so the
        # relay probes with a metadata request, which writes nothing, until the broker answers.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
                return
            try:
                await self.bus.ping()
                return
            except AdapterUnavailable:
                continue

    async def _take_lock(self, conn: AsyncConnection) -> bool:
        if conn.dialect.name != "postgresql":
            return True
        return bool(await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": self._LOCK_ID}))

    async def _purge(self) -> None:
        async with self.engine.begin() as conn:
            removed = await outbox.purge_sent(conn, self.retention)
        if removed:
            log.info("journal retention purged rows", rows=removed)
