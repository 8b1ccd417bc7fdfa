"""A handler's access to the state store: short transactions, never one held open across an outside call.

A handler reads and writes state inside `async with uow.transaction() as tx:` blocks and calls outside
systems (KFP, MLflow, GitLab, Kubernetes, the object store, a validation run) between them. So a slow
compile or a large batch's validation holds no database lock, and no webhook waits behind it.

Where events go:
- emitted on a block (`tx.emit`): written to the outbox in that block's transaction, beside the state
  change that implies them, so the state guards against a second emission after a crash;
- emitted on the unit of work (`uow.emit`): written with the consumer's inbox row when the handling
  commits; a crash before that commit emits nothing and the redelivered event is handled again.

A block opened with `completes=True` also writes the inbox row (and every event emitted so far): the
result, its events and "handled" commit together. Handlers record intent (idempotently keyed) in one
block, act outside, then record the result in a completing block; a crash in between resumes from the
recorded intent when the event is redelivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlcd import events, tracing
from mlcd.store import inbox, outbox


class Transaction:
    """One open database transaction and the events to write in it."""

    def __init__(self, connection: AsyncConnection, uow: UnitOfWork) -> None:
        self.connection = connection
        self.emitted: list[events.Envelope[Any]] = []
        self._uow = uow

    @property
    def cause(self) -> events.Envelope[Any] | None:
        return self._uow.cause

    @property
    def correlation(self) -> str | None:
        return self._uow.correlation

    def emit(self, data: events.Payload, *, id: str | None = None, subject: str | None = None) -> str:
        """Queue an event for this transaction; its id derives from the cause, the same on a retry."""
        envelope = self._uow.envelope(data, id=id, subject=subject)
        self.emitted.append(envelope)
        return envelope.id

    async def flush(self) -> None:
        if self.emitted:
            await outbox.add(self.connection, self.emitted)
            self.emitted = []


class UnitOfWork:
    """What one handling (a consumer's event, a timer's tick, an HTTP request) writes, and when."""

    def __init__(
        self,
        engine: AsyncEngine,
        source: str,
        cause: events.Envelope[Any] | None = None,
        *,
        group: str | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.cause = cause
        self.group = group
        self.emitted: list[events.Envelope[Any]] = []
        self.completed = False
        self._on_commit = on_commit
        self._count = 0

    @property
    def correlation(self) -> str | None:
        """The chain what is emitted here belongs to: the one being followed (`tracing.following`: the
        runtime follows each handled event's chain; a timer or an API call follows the chain of the training
        run, gate or rollout it acts on), else the cause's, else none (each event emitted begins a chain of
        its own). Rows that later work acts on keep it."""
        trace = tracing.current()
        if trace is not None:
            return trace.correlation_id
        return self.cause.correlation if self.cause is not None else None

    def envelope(
        self, data: events.Payload, *, id: str | None = None, subject: str | None = None
    ) -> events.Envelope[Any]:
        if id is None and self.cause is not None:
            id = events.derived_id(self.cause.id, data.type, str(self._count))
        self._count += 1
        return events.new_event(
            data, source=self.source, id=id, subject=subject, correlationid=self.correlation
        )

    def emit(self, data: events.Payload, *, id: str | None = None, subject: str | None = None) -> str:
        """Queue an event for the commit of the whole handling (with the inbox row)."""
        envelope = self.envelope(data, id=id, subject=subject)
        self.emitted.append(envelope)
        return envelope.id

    async def finish(self) -> None:
        """Write what is left of one handling: its remaining events and, unless written, its inbox row.

        The consumer runtime does the same for a whole poll batch in one transaction.
        """
        needs_inbox_row = not self.completed and self.cause is not None and self.group is not None
        if self.emitted or needs_inbox_row:
            async with self.transaction(completes=not self.completed):
                pass  # a completing block writes the remaining events (and the inbox row, if there is one)

    @asynccontextmanager
    async def transaction(self, *, completes: bool = False) -> AsyncIterator[Transaction]:
        """A short transaction; keep outside calls out of it. `completes`: see the module's docstring."""
        async with self.engine.begin() as conn:
            tx = Transaction(conn, self)
            yield tx
            if completes or self.completed:
                tx.emitted[:0], self.emitted = self.emitted, []
            await tx.flush()
            if completes and self.cause is not None and self.group is not None:
                await inbox.record(conn, self.group, self.cause.id, self.cause.type)
        self.completed = self.completed or completes
        if self._on_commit is not None:
            self._on_commit()
