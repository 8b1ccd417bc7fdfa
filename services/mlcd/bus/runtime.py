"""The consumer runtime: handlers by event type, inbox dedupe, outbox, retries, the DLQ, the relay.

No database transaction is open while a handler runs: handlers open short ones of their own through the
unit of work (store/unit_of_work.py) and call outside systems between them. What a poll batch's handlers
leave for the end (their inbox rows and the events they emitted on the unit of work) is written in one
short transaction after them, and offsets are committed only after that. A failing event is retried with
bounded exponential backoff when its error is temporary (by class), parked at once when it is not; a
store outage holds the batch, without leaving the group, until the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, logs, metrics, tracing
from mlcd.bus.port import Bus, Subscription
from mlcd.errors import AdapterUnavailable, RecordsRefused, TemporaryError
from mlcd.events import Record
from mlcd.store import database, dead_letters, inbox, outbox
from mlcd.store.unit_of_work import Transaction, UnitOfWork

log = logs.get(__name__)
_DEBUG = functools.partial(logs.enabled, logging.DEBUG)

T = TypeVar("T")
MAX_BATCH = 500
"""Records per poll: the batch's inbox read, its write and its offset commit are one round trip each."""
WRITE_WITHIN_S = 0.2
"""A batch whose handlers take longer writes and commits what is handled so far after this long, so slow
handlers do not hold back the events emitted before them."""
Handler = Callable[[events.Envelope[Any], UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried (temporary ones, by class) and how long to wait before each retry."""

    max_attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 10.0

    @staticmethod
    def retries(error: BaseException) -> bool:
        return isinstance(error, TemporaryError)

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Delay before attempt number `attempt + 1` (attempt counts from 1); at least what the error asks."""
        backoff = float(min(self.max_s, self.initial_s * 2 ** (attempt - 1)))
        asked = getattr(error, "retry_after_s", None)
        return max(backoff, float(asked)) if asked else backoff


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
) -> AsyncIterator[Transaction]:
    """One transaction outside any consumer (an HTTP endpoint); commits with its events on a clean exit."""
    uow = UnitOfWork(engine, source, on_commit=waker.wake if waker else None)
    async with uow.transaction() as tx:
        yield tx


class StoreUnavailable(Exception):
    """The state store does not answer: the consumer holds its batch until it does."""


class _Stopping(Exception):
    """A stop arrived while an event waited for its retry: it stays uncommitted and is redelivered."""


class _Failure(Exception):
    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass
class _Tally:
    """What one poll batch did, for its one log line and its metrics."""

    handled: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


@dataclass
class _Handled:
    """One record of a batch, handled or skipped; `uow` is set when it has rows left to write."""

    record: Record
    event: events.Envelope[Any] | None = None
    uow: UnitOfWork | None = None


def _event_ids(records: Sequence[Record]) -> list[str]:
    return [event_id for event_id in (r.header("ce_id") for r in records) if event_id]


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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
        max_batch: int = MAX_BATCH,
        write_within_s: float = WRITE_WITHIN_S,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.group = group
        self.handlers = handlers
        self.source = source
        self.retry = retry
        self.waker = waker
        self.max_batch = max_batch
        self.write_within_s = write_within_s
        self.topics = sorted({events.PAYLOAD_TYPES[t].topic() for t in handlers})
        self._subscription: Subscription | None = None
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self._tally = _Tally()
        self._conn: AsyncConnection | None = None
        # PostgreSQL: the inbox read and the batch write are one statement each, run in autocommit on the
        # consumer's own connection (one round trip each; no BEGIN, no COMMIT, no pool pre-ping).
        self._single_statements = engine.dialect.name == "postgresql"
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first."""
        self._stop = stop
        self._subscription = await self.bus.subscribe(self.group, self.topics)
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    records = await self._subscription.poll(self.max_batch, 0.2)
                except AdapterUnavailable as e:
                    log.warning("poll failed; retrying", group=self.group, error=str(e))
                    await _pause(stop, 1.0)
                    continue
                for (topic, partition), lag in self._subscription.lag().items():
                    self._metric(metrics.CONSUMER_LAG, topic, str(partition)).set(lag)
                if records:
                    await self._handle_until_done(records)
                else:
                    await self._drop_connection()  # idle: the connection goes back to the pool
        finally:
            self.ready.clear()
            try:
                await self._subscription.close()
            finally:
                await self._drop_connection()

    async def _handle_until_done(self, records: Sequence[Record]) -> None:
        # A store outage must not cost a group rejoin: the partitions are paused (polls keep the member
        # alive), nothing of the batch is committed, and once the store answers the batch is handled
        # again; the inbox skips what had been committed before the outage.
        while not self._stop.is_set():
            try:
                await self.handle_batch(records)
                return
            except _Stopping:
                return
            except StoreUnavailable as e:
                log.warning("store unavailable; batch held until it answers", group=self.group, error=str(e))
            metrics.CONSUMER_HELD.labels(self.group).set(1)
            try:
                await self._hold_until_store_answers()
            finally:
                metrics.CONSUMER_HELD.labels(self.group).set(0)

    async def _hold_until_store_answers(self) -> None:
        assert self._subscription is not None
        self._subscription.pause()
        try:
            wait_s = 0.25
            while not self._stop.is_set():
                await self._subscription.poll(self.max_batch, wait_s)
                if await database.answers(self.engine):
                    log.info("store answers again; handling the held batch", group=self.group)
                    return
                wait_s = min(wait_s * 2, 5.0)
        finally:
            self._subscription.resume()

    async def handle_batch(self, records: Sequence[Record]) -> None:
        """Handle records in order; a failing one is retried or parked before the ones after it.

        What the handlers leave is written, and offsets committed, at the end of the batch, or sooner
        once it has taken `write_within_s`. Logs and metrics are per batch: one info line and one counter
        step per event type; the per-event lines are at debug level.
        """
        assert self._subscription is not None
        started = time.perf_counter()
        seen = await self._store(self._seen_among(records))
        self._tally = _Tally()
        done: list[_Handled] = []
        written = started
        for record in records:
            try:
                done.append(await self._handle_one(record, attempt=1, seen=seen))
            except _Failure as failure:
                await self._complete(done)
                done = [await self._retry_then_park(record, failure.error)]
            if time.perf_counter() - written >= self.write_within_s:
                await self._complete(done)
                done, written = [], time.perf_counter()
        await self._complete(done)
        self._report(self._tally, len(records), time.perf_counter() - started)

    async def _connection(self) -> AsyncConnection:
        """The consumer's own store connection, kept from batch to batch while records keep coming (no
        checkout, no pre-ping per batch) and given back at the first empty poll; no transaction is open
        on it while the handlers run."""
        if self._conn is None:
            conn = await self.engine.connect().start()
            if self._single_statements:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return self._conn

    async def _drop_connection(self, *, dead: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*database.OUTAGE_ERRORS):
                await (conn.invalidate() if dead else conn.close())

    async def _in_transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` in one transaction on the consumer's connection (PostgreSQL: `work` is one statement in
        autocommit), or on a fresh one once that one died."""
        for last in (False, True):
            conn = await self._connection()
            try:
                if self._single_statements:
                    return await work(conn)
                async with conn.begin():
                    return await work(conn)
            except database.OUTAGE_ERRORS:
                # It died since the last batch or while the handlers ran (a store restart): a fresh
                # connection is pinged first. Had the write gone through, the inbox rows now clash and
                # the batch is written event by event, each one that is already there skipped.
                await self._drop_connection(dead=True)
                if last:
                    raise
        raise AssertionError("unreachable")

    def _report(self, tally: _Tally, records: int, seconds: float) -> None:
        for event_type, count in tally.handled.items():
            self._metric(metrics.EVENTS_CONSUMED, event_type).inc(count)
        if tally.duplicates:
            self._metric(metrics.EVENTS_DUPLICATE).inc(tally.duplicates)
        if tally.handled or tally.duplicates:
            log.info(
                "batch handled",
                group=self.group,
                records=records,
                handled=dict(tally.handled),
                duplicates=tally.duplicates,
                seconds=round(seconds, 4),
            )

    def _metric(self, family: Any, *labels: str) -> Any:
        """A metric's child for this group and `labels`, looked up once (labels() takes a lock each time)."""
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self.group, *labels)
        return child

    async def _seen_among(self, records: Sequence[Record]) -> set[str]:
        # Only the records a handler of this group takes: the others are skipped without a look.
        ids = _event_ids([r for r in records if r.header("ce_type") in self.handlers])
        if not ids:
            return set()

        async def read(conn: AsyncConnection) -> set[str]:
            return await inbox.seen_among(conn, self.group, ids)

        return await self._in_transaction(read)

    async def _store(self, work: Awaitable[Any]) -> Any:
        """Run store work of the runtime's own; an outage becomes StoreUnavailable."""
        try:
            return await work
        except database.OUTAGE_ERRORS as e:
            if await database.answers(self.engine):
                raise
            raise StoreUnavailable(describe(e)) from e

    async def _handle_one(self, record: Record, *, attempt: int, seen: set[str]) -> _Handled:
        event_type = record.header("ce_type")
        if event_type in events.PAYLOAD_TYPES and event_type not in self.handlers:
            return _Handled(record)  # a type another group takes (it parks the record if it is invalid)
        decoded = events.decode(record)
        if isinstance(decoded, events.DecodeError):
            await self._store(self._park(record, decoded.reason, attempts=0))
            return _Handled(record)
        handlers = self.handlers.get(decoded.type, ())
        if not handlers:
            return _Handled(record)
        with (
            logs.bound(
                event_id=decoded.id,
                event_type=decoded.type,
                model=decoded.key,
                group=self.group,
                correlation_id=decoded.correlation,
            ),
            tracing.following(decoded.correlation, decoded.id),
        ):
            if decoded.id in seen:
                self._tally.duplicates += 1
                log.info("duplicate skipped")  # rare (a redelivery after a crash or rebalance): kept at info
                return _Handled(record)
            started = time.perf_counter()
            uow = UnitOfWork(self.engine, self.source, decoded, group=self.group, on_commit=self._wake)
            try:
                for handler in handlers:
                    await handler(decoded, uow)
            except IntegrityError as e:
                if await self._store(self._seen_now(decoded.id)):
                    log.info("handled by another member meanwhile; skipped")
                    return _Handled(record)
                raise await self._failure(e, attempt, decoded.type) from e
            except Exception as e:  # any handler failure is retried or parked, never fatal to the loop
                raise await self._failure(e, attempt, decoded.type) from e
            seen.add(decoded.id)
            seconds = time.perf_counter() - started
            self._metric(metrics.HANDLER_SECONDS, decoded.type).observe(seconds)
            self._tally.handled[decoded.type] = self._tally.handled.get(decoded.type, 0) + 1
            if _DEBUG():
                log.debug("handled", seconds=round(seconds, 4))
            return _Handled(record, decoded, uow)

    async def _failure(self, error: Exception, attempt: int, event_type: str) -> Exception:
        if isinstance(error, database.OUTAGE_ERRORS) and not await database.answers(self.engine):
            return StoreUnavailable(describe(error))
        metrics.EVENTS_FAILED.labels(self.group, event_type).inc()
        log.warning(
            "handler failed", attempt=attempt, error=describe(error), retried=self.retry.retries(error)
        )
        return _Failure(error)

    async def _seen_now(self, event_id: str) -> bool:
        async with self.engine.begin() as conn:
            return await inbox.seen(conn, self.group, event_id)

    async def _complete(self, done: Sequence[_Handled]) -> None:
        """Write what handled events left (inbox rows, events emitted on the unit of work); commit offsets."""
        assert self._subscription is not None
        pending = [h for h in done if h.uow is not None and (h.uow.emitted or not h.uow.completed)]
        if pending:
            try:
                await self._store(self._write(pending))
            except IntegrityError:
                await self._store(self._write_one_by_one(pending))
            self._wake()
        if done:
            await self._subscription.commit([h.record for h in done])

    async def _write(self, pending: Sequence[_Handled]) -> None:
        emitted = [e for h in pending if h.uow is not None for e in h.uow.emitted]

        async def write(conn: AsyncConnection) -> None:
            if self._single_statements:
                await outbox.add_with_inbox(conn, emitted, self.group, _inbox_rows(pending))
                return
            if emitted:
                await outbox.add(conn, emitted)
            await inbox.record_many(conn, self.group, _inbox_rows(pending))

        await self._in_transaction(write)

    async def _write_one_by_one(self, pending: Sequence[_Handled]) -> None:
        # Another member handled one of these events meanwhile (a rebalance): its inbox row is there, and
        # so are the events it emitted. A savepoint per event turns that one into a skip.
        log.warning("batch lost an inbox race; writing it event by event", group=self.group)
        async with self.engine.begin() as conn:
            for handled in pending:
                try:
                    async with conn.begin_nested():
                        await self._write_each(conn, handled)
                except IntegrityError:
                    log.info(
                        "handled by another member meanwhile; skipped",
                        event_id=handled.record.header("ce_id"),
                    )

    async def _write_each(self, conn: AsyncConnection, handled: _Handled) -> None:
        assert handled.uow is not None
        if handled.uow.emitted:
            await outbox.add(conn, handled.uow.emitted)
        await inbox.record_many(conn, self.group, _inbox_rows([handled]))

    async def _retry_then_park(self, record: Record, error: BaseException) -> _Handled:
        attempt = 1
        while self.retry.retries(error) and attempt < self.retry.max_attempts:
            if await _pause(self._stop, self.retry.delay(attempt, error)):
                raise _Stopping()
            attempt += 1
            seen = await self._store(self._seen_among([record]))
            try:
                return await self._handle_one(record, attempt=attempt, seen=seen)
            except _Failure as failure:
                error = failure.error
        await self._store(self._park(record, describe(error), attempt))
        return _Handled(record)

    async def _park(self, record: Record, error: str, attempts: int) -> None:
        event_type = record.header("ce_type") or "undecodable"
        metrics.EVENTS_DEAD_LETTERED.labels(self.group, event_type).inc()
        log.error("dead-lettered", group=self.group, topic=record.topic, reason=error, attempts=attempts)
        async with self.engine.begin() as conn:
            await dead_letters.park(conn, self.group, record, error, attempts)
            await outbox.add_raw(conn, dead_letter_record(record, self.group, error, attempts))
        self._wake()

    def _wake(self) -> None:
        if self.waker is not None:
            self.waker.wake()


def _inbox_rows(handled: Sequence[_Handled]) -> list[tuple[str, str]]:
    return [
        (h.event.id, h.event.type)
        for h in handled
        if h.event is not None and h.uow is not None and not h.uow.completed
    ]


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep unless `stop` is set first; True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


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


RELAY_GROUP = "mlcd-relay"
"""The dead letters' group name for records the broker refused for good."""


class OutboxRelay:
    """Publishes outbox rows in order and marks them sent.

    On PostgreSQL the rows fall in `outbox.SLOTS` slots by (topic, key), and a relay publishes a slot
    only while it holds that slot's advisory lock (for one transaction: select, publish, mark sent), so
    the rows of one key are published by one relay at a time, in order, while relays of other services
    and replicas publish the other slots alongside. A sweep is one round over every slot it can lock;
    while the last sweep left full batches (a backlog) it takes the slots `SLOTS // WINDOWS` at a time
    instead, starting where this relay's rotation stands, so other relays lock the other windows.

    `mlcd_outbox_pending` is the count of unsent rows, taken at most once every `count_every_s`.
    """

    _LOCK_ID = 0x6D6C6372  # "mlcr": the first key of the two-key advisory lock, the slot the second
    WINDOWS = 4
    CONTENDED_RETRY_S = 0.01
    """A sweep that found slots locked by another relay looks again this soon: the rows that relay's round
    did not see (written after its select) would otherwise wait for the idle poll."""

    def __init__(
        self,
        engine: AsyncEngine,
        bus: Bus,
        *,
        waker: RelayWaker | None = None,
        batch: int = 500,
        idle_poll_s: float = 0.5,
        retention: timedelta = timedelta(days=30),
        count_every_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.waker = waker or RelayWaker()
        self.batch = batch
        self.idle_poll_s = idle_poll_s
        self.retention = retention
        self.count_every_s = count_every_s
        self._counted_at = -count_every_s
        self._rotation = random.randrange(self.WINDOWS)
        self._full = False
        self._contended = False
        self._published: dict[str, Any] = {}
        self._conn: AsyncConnection | None = None
        self._running = False

    async def run(self, stop: asyncio.Event) -> None:
        self._running = True
        try:
            last_purge = 0.0
            while not stop.is_set():
                try:
                    published = await self.publish_pending()
                    await self._count_pending()
                    if not published:
                        await self._drop_connection()  # idle: the connection goes back to the pool
                except AdapterUnavailable as e:
                    log.warning("relay cannot reach the broker; rows stay in the outbox", error=str(e))
                    await self._until_broker_answers(stop)
                    continue
                if time.monotonic() - last_purge > 3600:
                    await self._purge()
                    last_purge = time.monotonic()
                if not self._full:
                    await self.waker.wait(self.CONTENDED_RETRY_S if self._contended else self.idle_poll_s)
            await self.publish_pending_quietly()
        finally:
            self._running = False
            await self._drop_connection()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the relay's own connection, kept from round to round while there is work (a
        pooled checkout costs a ping round trip) and given back after a sweep that found nothing; a
        connection the store dropped is replaced on the next round."""
        if self._conn is None:
            self._conn = await self.engine.connect().start()
        try:
            async with self._conn.begin():
                yield self._conn
        except database.OUTAGE_ERRORS:
            await self._drop_connection(dead=True)
            raise
        finally:
            if not self._running:  # a one-shot sweep outside `run` (a flush, a test) keeps no connection
                await self._drop_connection()

    async def _drop_connection(self, *, dead: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*database.OUTAGE_ERRORS):
                await (conn.invalidate() if dead else conn.close())

    async def publish_pending_quietly(self) -> None:
        """Flush the whole outbox (a stopping relay must not leave full batches behind)."""
        try:
            await self.publish_pending()
            while self._full:
                await self.publish_pending()
        except AdapterUnavailable as e:
            log.warning("relay stopped with rows still in the outbox", error=str(e))

    async def publish_pending(self) -> int:
        """One sweep: publish a batch of unsent rows (of each slot window, when behind); returns how many."""
        behind, self._full, self._contended = self._full, False, False
        if self.engine.dialect.name != "postgresql":
            return await self._publish_round(None)
        if not behind:
            return await self._publish_round(range(outbox.SLOTS))
        width = outbox.SLOTS // self.WINDOWS
        published = 0
        for step in range(self.WINDOWS):
            window = (self._rotation + step) % self.WINDOWS
            published += await self._publish_round(range(window * width, (window + 1) * width))
        self._rotation = (self._rotation + 1) % self.WINDOWS
        return published

    async def _count_pending(self, *, now: bool = False) -> None:
        if now or time.monotonic() - self._counted_at >= self.count_every_s:
            self._counted_at = time.monotonic()
            async with self._transaction() as conn:
                metrics.OUTBOX_PENDING.set(await outbox.count_unsent(conn))

    async def _publish_round(self, slots: Sequence[int] | None) -> int:
        """Publish one batch in one transaction: lock the slots (PostgreSQL), select, publish, mark sent."""
        async with self._transaction() as conn:
            if slots is not None:
                # Its own statement: the select after it must take its snapshot once the locks are held,
                # or it could still see rows another relay marked sent just before releasing them.
                taken = await self._take_slots(conn, slots)
                self._contended = self._contended or len(taken) < len(slots)
                if not taken:
                    return 0
                slots = taken
            pending = await outbox.unsent(conn, self.batch, slots)
            if not pending:
                return 0
            refused: dict[int, str] = {}
            try:
                await self.bus.publish([p.record for p in pending])
            except RecordsRefused as e:
                refused = e.refused
                await self._park_refused(conn, [(pending[i], reason) for i, reason in refused.items()])
            published = [p for i, p in enumerate(pending) if i not in refused]
            await outbox.mark_sent(conn, [p.seq for p in published])
        self._full = self._full or len(pending) >= self.batch
        by_type: dict[str, int] = {}
        for p in published:
            event_type = p.record.header("ce_type") or "raw"
            by_type[event_type] = by_type.get(event_type, 0) + 1
        for event_type, count in by_type.items():
            child = self._published.get(event_type)
            if child is None:
                child = self._published[event_type] = metrics.EVENTS_PUBLISHED.labels(event_type)
            child.inc(count)
        return len(pending)

    async def _take_slots(self, conn: AsyncConnection, slots: Sequence[int]) -> list[int]:
        """The slots among `slots` whose lock this transaction got; another relay holds the others."""
        rows = await conn.execute(
            text(
                "SELECT slot FROM unnest(CAST(:slots AS integer[])) AS slot "
                "WHERE pg_try_advisory_xact_lock(:id, slot) ORDER BY slot"
            ),
            {"slots": list(slots), "id": self._LOCK_ID},
        )
        return [int(r.slot) for r in rows]

    async def _park_refused(
        self, conn: AsyncConnection, refused: Sequence[tuple[outbox.Pending, str]]
    ) -> None:
        # A record the broker refuses for good would otherwise stay the first unsent row and hold back
        # everything behind it: it leaves the outbox for the dead letters, and the journal says so.
        for pending, reason in refused:
            record = pending.record
            event_type = record.header("ce_type") or "raw"
            metrics.EVENTS_DEAD_LETTERED.labels(RELAY_GROUP, event_type).inc()
            log.error(
                "the broker refused a record for good; parked",
                topic=record.topic,
                event_id=record.header("ce_id"),
                reason=reason,
                bytes=len(record.value),
            )
            await dead_letters.park(conn, RELAY_GROUP, record, reason, 1)
            notice = events.NoticeRaised(
                model=(record.key or b"").decode("utf-8", "replace") or "unknown",
                message=(
                    f"the broker refused {event_type} {record.header('ce_id') or ''} for topic "
                    f"{record.topic} for good ({reason}); it is parked with the dead letters of {RELAY_GROUP}"
                ),
                cause_event_id=record.header("ce_id") or "",
            )
            await outbox.add(conn, [events.new_event(notice, source="mlcd/relay")])
        await outbox.remove(conn, [p.seq for p, _ in refused])

    async def _until_broker_answers(self, stop: asyncio.Event) -> None:
        # A publish that timed out is in doubt: a hung broker still holds the request and writes it when it
        # wakes. Sending the rows again at every retry would put one more copy on the bus each time, so the
        # relay probes with a metadata request, which writes nothing, until the broker answers.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
                return
            with contextlib.suppress(*database.OUTAGE_ERRORS):
                await self._count_pending(now=True)
            try:
                await self.bus.ping()
                return
            except AdapterUnavailable:
                continue

    async def _purge(self) -> None:
        async with self.engine.begin() as conn:
            removed = await outbox.purge_sent(conn, self.retention)
        if removed:
            log.info("journal retention purged rows", rows=removed)
