"""One database transaction: a handler's state changes, its inbox row and the events it emits.

Handlers never commit; the runtime (or an HTTP endpoint) opens the unit of work and commits it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mlcd import events
from mlcd.store import outbox


class UnitOfWork:
    """Collects the events a handler emits; they reach the outbox in the handler's transaction."""

    def __init__(self, connection: AsyncConnection, source: str, cause: events.Envelope[Any] | None = None):
        self.connection = connection
        self.source = source
        self.cause = cause
        self.emitted: list[events.Envelope[Any]] = []

    def emit(self, data: events.Payload, *, id: str | None = None, subject: str | None = None) -> str:
        """Queue an event; its id is derived from the cause so a retried handler emits the same id."""
        if id is None and self.cause is not None:
            id = events.derived_id(self.cause.id, data.type, str(len(self.emitted)))
        envelope = events.new_event(data, source=self.source, id=id, subject=subject)
        self.emitted.append(envelope)
        return envelope.id

    async def flush(self) -> None:
        if self.emitted:
            await outbox.add(self.connection, self.emitted)
            self.emitted = []
