"""How a microservice declares itself: event type → handlers, plus timers; the root wires the ports.

A handler is `async def on_x(event: Envelope[X], uow: UnitOfWork, *, <port names>) -> None`.
A timer is `async def tick(uow: UnitOfWork, *, <port names>) -> None`, run every `interval_s` in its
own transaction. Ports are passed by parameter name (settings, policies, registry, objects, code_host,
orchestrator, serving, analysis, notifier).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlcd import events

Callback = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Timer:
    name: str
    interval_s: float
    run: Callback


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    handlers: Mapping[type[events.Payload], Sequence[Callback]]
    timers: Sequence[Timer] = field(default_factory=tuple)

    @property
    def group(self) -> str:
        return f"mlcd-{self.name}"

    @property
    def source(self) -> str:
        return f"mlcd/{self.name}"


def bind(callback: Callback, ports: Mapping[str, Any]) -> Callback:
    """Fill the callback's keyword parameters from `ports` by name; a missing port fails loudly at start."""
    wanted = [
        name
        for name, p in inspect.signature(callback).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    missing = [name for name in wanted if name not in ports]
    if missing:
        raise LookupError(f"{callback.__qualname__} needs ports that are not wired: {', '.join(missing)}")
    return functools.partial(callback, **{name: ports[name] for name in wanted})
