"""One correlation id per chain of events, and W3C trace context on the calls made while handling one.

Every event carries two CloudEvents extension attributes. `correlationid` is the id of the event that began
its chain (a webhook delivery, a data arrival, an on-call engineer's request); every event emitted because
of it inherits it, and so do the rows (training run, gate, rollout) whose timers and API calls emit later
events of the same chain. `traceparent` (CloudEvents' distributed-tracing extension) is W3C trace context:
its trace id is the correlation id's hex, its parent id names the event itself.

While mlcd handles an event, every call it makes to an outside system carries `headers()`: a W3C
`traceparent` in the same trace, so a platform's own tracing can be joined to mlcd's journal (each HTTP
stack's hook is in `adapters/trace_headers.py`). Pure: nothing here does I/O or imports an HTTP client.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Trace:
    """Where the current work sits: the chain it belongs to and the event (span) it acts for."""

    correlation_id: str
    span_of: str  # the event id this work acts for

    @property
    def traceparent(self) -> str:
        return traceparent(self.correlation_id, self.span_of)


def _trace_id(correlation_id: str) -> str:
    """32 lowercase hex: the correlation id's own hex when it is a UUID (as mlcd's event ids are)."""
    try:
        hex_id = uuid.UUID(correlation_id).hex
    except ValueError:
        hex_id = ""
    if not hex_id or hex_id == "0" * 32:
        hex_id = hashlib.sha256(correlation_id.encode()).hexdigest()[:32]
    return hex_id


def traceparent(correlation_id: str, event_id: str) -> str:
    """A W3C traceparent (version 00, sampled) in the chain's trace; its parent id derives from `event_id`."""
    span = hashlib.sha256(event_id.encode()).hexdigest()[:16]
    if span == "0" * 16:  # all zeros is invalid in W3C trace context
        span = "0" * 15 + "1"
    return f"00-{_trace_id(correlation_id)}-{span}-01"


_current: ContextVar[Trace | None] = ContextVar("mlcd_trace", default=None)


def current() -> Trace | None:
    return _current.get()


@contextmanager
def following(correlation_id: str | None, span_of: str | None = None) -> Iterator[None]:
    """Work inside belongs to chain `correlation_id` (acting for event `span_of`, else the chain's start).

    With no correlation id (a row written before correlation ids existed) the work starts no chain.
    """
    if not correlation_id:
        yield
        return
    token = _current.set(Trace(correlation_id, span_of or correlation_id))
    try:
        yield
    finally:
        _current.reset(token)


def headers() -> dict[str, str]:
    """The trace-context headers for an outgoing call made now (none outside any chain)."""
    trace = _current.get()
    return {"traceparent": trace.traceparent} if trace is not None else {}
