"""Durable publishing for webhooks: the broker first, the outbox while the broker is away.

A delivery is answered 2xx only once its events are durable: acknowledged by the broker (then journaled
as sent) or written unsent to the outbox, which the relay publishes in order when the broker returns.
An event whose id is already in the outbox is a redelivery and is not published again; deliveries of the
same event that arrive at once (GitLab retrying while the first is in flight, two ingest replicas) are
taken one after the other, so only the first publishes. After a broker
failure the publisher spools straight to the outbox for a cool-down, and it never publishes ahead of an
event for the same key that still waits in the outbox, so per-model order holds across an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, logs, metrics
from mlcd.bus.port import Bus
from mlcd.bus.runtime import RelayWaker, dead_letter_record
from mlcd.errors import AdapterUnavailable
from mlcd.ingest.delivery import Envelope
from mlcd.store import dead_letters, outbox
from mlcd.store import ingest as ingest_store

log = logs.get(__name__)
GROUP = "mlcd-ingest"
STORE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


class Status(StrEnum):
    PUBLISHED = "published"
    SPOOLED = "spooled"
    DUPLICATE = "duplicate"
    PARKED = "parked"


@dataclass(frozen=True)
class Outcome:
    status: Status
    events: Sequence[Envelope]


class _KeyedLocks:
    """One asyncio lock per key, forgotten once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def holding(self, keys: Sequence[str]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))  # one order for all, so two holders never wait on each other
        for key in ordered:
            lock, users = self._locks.get(key, (asyncio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            async with AsyncExitStack() as stack:
                for key in ordered:
                    await stack.enter_async_context(self._locks[key][0])
                yield
        finally:
            for key in ordered:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _Handoff:
    """Store connections passed from a finished delivery to the next one while deliveries overlap.

    A connection from the pool is pinged first (a round trip: store/database.py); while other deliveries
    are in flight, a finished one keeps its connection for the next instead. When the last delivery in
    flight finishes, every kept connection goes back to the pool, so an idle publisher holds none. A
    delivery that fails drops its connection (invalidated).
    """

    def __init__(self, engine: AsyncEngine, keep: int = 4) -> None:
        self.engine = engine
        self.keep = keep
        self._spare: list[AsyncConnection] = []
        self._in_flight = 0

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on a kept connection, or on one from the pool."""
        self._in_flight += 1
        conn: AsyncConnection | None = None
        try:
            conn = self._spare.pop() if self._spare else await self.engine.connect().start()
            async with conn.begin():
                yield conn
        except BaseException:  # any failure or cancel mid-transaction: the connection is not handed on
            if conn is not None:
                await _quietly(conn.invalidate())
                conn = None
            raise
        finally:
            self._in_flight -= 1
            if conn is not None:
                if self._in_flight and len(self._spare) < self.keep:
                    self._spare.append(conn)
                else:
                    await _quietly(conn.close())
            if not self._in_flight:
                spare, self._spare = self._spare, []
                for kept in spare:
                    await _quietly(kept.close())


async def _quietly(closing: Awaitable[None]) -> None:
    with contextlib.suppress(*STORE_ERRORS):
        await closing


class Publisher:
    def __init__(
        self,
        bus: Bus,
        engine: AsyncEngine,
        waker: RelayWaker | None = None,
        *,
        timeout_s: float = 2.0,
        cool_down_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.waker = waker
        self.timeout_s = timeout_s
        self.cool_down_s = cool_down_s
        self._clock = clock
        self._broker_suspect_until = 0.0
        self._taking = _KeyedLocks()
        self._connections = _Handoff(engine)

    async def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Make the events durable; raises AdapterUnavailable when neither broker nor store takes them."""
        published = False
        try:
            async with (
                asyncio.timeout(2 * self.timeout_s),
                self._taking.holding([e.id for e in envelopes]),
                self._connections.begin() as conn,
            ):
                relaxed = await _lock_across_replicas(conn, [e.id for e in envelopes])
                keys = [(type(e.data).topic(), e.key.encode()) for e in envelopes]
                known, behind = await ingest_store.known_and_waiting(conn, [e.id for e in envelopes], keys)
                fresh = [e for e in envelopes if e.id not in known]
                if not fresh:
                    return Outcome(Status.DUPLICATE, envelopes)
                published = (
                    not behind
                    and self._broker_trusted()
                    and await self._publish([events.encode(e) for e in fresh])
                )
                if relaxed and not published:
                    await _restore_durability(conn)  # the outbox row is the only copy: wait for the WAL
                await outbox.add(conn, fresh, sent=published)
        except STORE_ERRORS as e:
            if published:
                await self._journal_published(fresh, e)
                return Outcome(Status.PUBLISHED, fresh)
            log.warning("store unavailable; cannot tell redeliveries apart", error=repr(e))
            if self._broker_trusted() and await self._publish([events.encode(e) for e in envelopes]):
                return Outcome(Status.PUBLISHED, envelopes)
            raise AdapterUnavailable("neither the broker nor the state store accepted the event") from e
        if published:
            return Outcome(Status.PUBLISHED, fresh)
        self._wake()
        return Outcome(Status.SPOOLED, fresh)

    async def _journal_published(self, published: Sequence[Envelope], failure: Exception) -> None:
        """The broker holds the events but the transaction that journals them failed (on a loaded machine,
        the time limit ran out after the broker answered): journal them once more, on their own."""
        try:
            async with asyncio.timeout(self.timeout_s), self.engine.begin() as conn:
                known, _ = await ingest_store.known_and_waiting(conn, [e.id for e in published], [])
                if unjournaled := [e for e in published if e.id not in known]:
                    await outbox.add(conn, unjournaled, sent=True)
        except STORE_ERRORS as e:
            # Only the journal line (and redelivery detection) is missing: a redelivery publishes again
            # and the consumers' inboxes drop the copy.
            log.warning("published but not journaled", error=repr(failure), retry_error=repr(e))

    async def park(self, raw: events.Record, reason: str, journal: Envelope) -> Outcome:
        """Keep an unparseable delivery raw on the DLQ with its reason, and journal that it came."""
        dlq = dead_letter_record(raw, GROUP, reason, 0)
        try:
            async with asyncio.timeout(self.timeout_s), self.engine.begin() as conn:
                if await outbox.contains(conn, journal.id):
                    return Outcome(Status.DUPLICATE, [journal])
                await dead_letters.park(conn, GROUP, raw, reason, 0)
                await outbox.add_raw(conn, dlq)
                await outbox.add(conn, [journal])
        except STORE_ERRORS as e:
            log.warning("store unavailable; parking on the broker directly", error=repr(e))
            if self._broker_trusted() and await self._publish([dlq, events.encode(journal)]):
                return Outcome(Status.PARKED, [journal])
            raise AdapterUnavailable("neither the state store nor the broker accepted the dead letter") from e
        self._wake()
        return Outcome(Status.PARKED, [journal])

    async def _publish(self, records: list[events.Record]) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.bus.publish(records)
        except (AdapterUnavailable, TimeoutError) as e:
            self._broker_suspect_until = self._clock() + self.cool_down_s
            log.warning("broker unavailable; spooling to the outbox", error=repr(e))
            return False
        for record in records:
            metrics.EVENTS_PUBLISHED.labels(record.header("ce_type") or "raw").inc()
        return True

    def _broker_trusted(self) -> bool:
        return self._clock() >= self._broker_suspect_until

    def _wake(self) -> None:
        if self.waker is not None:
            self.waker.wake()


async def _lock_across_replicas(conn: AsyncConnection, event_ids: Sequence[str]) -> bool:
    """Take the events' locks, in one order, in one statement; True when durability was relaxed with it.

    Another ingest replica taking the same event waits here until this transaction ends, then finds it.
    The same round trip relaxes durability for the transaction (`synchronous_commit = off`): a journal
    row for an event the broker already acknowledged need not wait for the WAL flush. When the broker
    does not take the events, `_restore_durability` turns it back on before the outbox row is written.
    """
    if conn.dialect.name != "postgresql":
        return False
    await conn.execute(
        text(
            "SELECT set_config('synchronous_commit', 'off', true), "
            "(SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0))) "
            " FROM (SELECT DISTINCT id FROM unnest(CAST(:ids AS text[])) AS id ORDER BY id) AS ids)"
        ),
        {"ids": list(event_ids)},
    )
    return True


async def _restore_durability(conn: AsyncConnection) -> None:
    await conn.execute(text("SET LOCAL synchronous_commit = on"))
