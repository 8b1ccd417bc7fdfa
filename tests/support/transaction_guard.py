"""Which outside calls a handler made while a store transaction was open (DESIGN: "no outside call inside a
database transaction").

`TransactionGuard(engine)` follows the engine's transactions with SQLAlchemy's own events (`begin`,
`commit`, `rollback` on the engine under the asyncio one). A transaction counts for the task that began it
and for every task started while it was open (a `wait_for`, a `to_thread`, a `gather`): the open
connections are kept in a context variable, which SQLAlchemy's greenlets share with the awaiting task and
asyncio copies into each task it starts. A connection counts while it is open and in a transaction, so one
`engine.connect()` that read something (SQLAlchemy began a transaction for it) counts until it is closed;
one in AUTOCOMMIT (the consumer runtime's own PostgreSQL connection) never does.

`guard.watch(ports)` wraps each port object the composition root hands handlers by name: a call of any of
its methods is recorded, with whether a transaction was open in the calling task when it ran (for a
coroutine method: when it was awaited, which is when it does its I/O). `guard.watch_call` wraps an outside
call that is not a port (a pipeline compile, a Great Expectations run, a chat webhook post).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

NOT_PORTS = frozenset({"settings", "policies"})
"""What the composition root hands handlers beside the ports: configuration, read in process."""
PURE = frozenset({"objects.uri", "serving.servable_problem"})
"""Port methods that are plain computations (no I/O, not even a file read): allowed anywhere."""


@dataclass(frozen=True)
class Call:
    """One call of an outside system: `what` is `port.method`; `in_transaction` whether one was open."""

    what: str
    in_transaction: bool
    where: str  # the handler's frames that made the call, for the failure message


class TransactionGuard:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        self._open: contextvars.ContextVar[tuple[Connection, ...]] = contextvars.ContextVar(
            f"open-transactions-{id(self)}", default=()
        )
        self.calls: list[Call] = []
        self._listeners = [("begin", self._began), ("commit", self._ended), ("rollback", self._ended)]
        for name, listener in self._listeners:
            event.listen(self._engine, name, listener)

    def close(self) -> None:
        for name, listener in self._listeners:
            event.remove(self._engine, name, listener)

    def _began(self, conn: Connection) -> None:
        self._open.set((*self._still_open(), conn))

    def _ended(self, conn: Connection) -> None:
        self._open.set(tuple(c for c in self._still_open() if c is not conn))

    def _still_open(self) -> tuple[Connection, ...]:
        return tuple(c for c in self._open.get() if _holds_a_transaction(c))

    def in_transaction(self) -> bool:
        """A transaction of the engine is open now that the calling task began, or that was open when the task
        (or one it descends from) was started."""
        return bool(self._still_open())

    def record(self, what: str) -> None:
        inside = self.in_transaction() and what not in PURE
        where = ""
        if inside:
            frames = _handler_frames()
            where = "".join(traceback.format_list(frames)) if frames else _NO_HANDLER_FRAME
        self.calls.append(Call(what, inside, where))

    @property
    def violations(self) -> list[Call]:
        return [c for c in self.calls if c.in_transaction]

    def called(self) -> set[str]:
        return {c.what for c in self.calls}

    def report(self) -> str:
        return "\n".join(
            f"{c.what} called inside a store transaction, from:\n{c.where}" for c in self.violations
        )

    def watch(self, ports: Mapping[str, Any]) -> dict[str, Any]:
        """The ports, each outside system's object wrapped so every call of it is recorded."""
        watched: dict[str, Any] = {}
        for name, port in ports.items():
            if name in NOT_PORTS:
                watched[name] = port
            elif name == "lineage":
                watched[name] = tuple(_Watched(self, f"lineage[{store.name}]", store) for store in port)
            else:
                watched[name] = _Watched(self, name, port)
        return watched

    def watch_call(self, what: str, call: Callable[..., Any]) -> Callable[..., Any]:
        """An outside call that is no port method (a module function), recorded like one."""
        return _recorded(self, what, call)


def _holds_a_transaction(conn: Connection) -> bool:
    # SQLAlchemy "begins" on an AUTOCOMMIT connection too (the consumer's own PostgreSQL connection runs
    # its one-statement reads and writes so), but the database holds nothing open between its statements.
    autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    return not conn.closed and conn.in_transaction() and not autocommit


def _recorded(guard: TransactionGuard, what: str, call: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(call):

        @functools.wraps(call)
        async def awaited(*args: Any, **kwargs: Any) -> Any:
            guard.record(what)
            return await call(*args, **kwargs)

        return awaited

    @functools.wraps(call)
    def called(*args: Any, **kwargs: Any) -> Any:
        guard.record(what)
        return call(*args, **kwargs)

    return called


_NO_HANDLER_FRAME = (
    "  (no handler frame on this stack: a worker thread or a task started inside the transaction)\n"
)


class _Watched:
    """A port object whose method calls the guard records; attributes that are not methods pass through."""

    def __init__(self, guard: TransactionGuard, name: str, port: Any) -> None:
        self._guard = guard
        self._name = name
        self._port = port

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._port, attribute)
        if attribute.startswith("_") or not callable(value):
            return value
        return _recorded(self._guard, f"{self._name}.{attribute}", value)

    def __repr__(self) -> str:
        return f"<watched {self._name}: {self._port!r}>"


def _handler_frames() -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_stack() if "/services/mlcd/" in f.filename][-6:]
