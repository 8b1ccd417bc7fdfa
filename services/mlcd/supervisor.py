"""One supervisor for every long-running task of a process: consumers, the relay, timers, companions.

A worker that raises is logged, counted and restarted after a growing pause; readiness and `/status`
see it as down until it runs again. A stop reaches every worker through one event: the ordinary ones
first, then those that drain last (the outbox relay, so it publishes what the others wrote while
stopping), each group given the drain timeout before it is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mlcd import logs, metrics

log = logs.get(__name__)

Run = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class Worker:
    """A task that runs until its stop event is set; returning earlier ends it for good."""

    name: str
    run: Run
    drains_last: bool = False


@dataclass
class _State:
    worker: Worker
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    failure: str | None = None
    restarts: int = 0
    finished: bool = False


class Supervisor:
    def __init__(
        self,
        workers: Sequence[Worker],
        *,
        drain_timeout_s: float = 25.0,
        restart_initial_s: float = 1.0,
        restart_max_s: float = 30.0,
    ) -> None:
        self.drain_timeout_s = drain_timeout_s
        self.restart_initial_s = restart_initial_s
        self.restart_max_s = restart_max_s
        self._states = [_State(w) for w in workers]
        self._started = False

    def add(self, worker: Worker) -> None:
        """Supervise one more worker (started at once when the supervisor runs)."""
        state = _State(worker)
        self._states.append(state)
        if self._started:
            state.task = asyncio.create_task(self._keep_running(state), name=worker.name)

    def start(self) -> None:
        self._started = True
        for state in self._states:
            state.task = asyncio.create_task(self._keep_running(state), name=state.worker.name)

    async def stop(self) -> None:
        """Stop the ordinary workers, then those that drain last; cancel any that outlive the timeout."""
        if not self._started:
            return
        self._started = False
        await self._stop([s for s in self._states if not s.worker.drains_last])
        await self._stop([s for s in self._states if s.worker.drains_last])

    def health(self) -> dict[str, str | None]:
        """Each worker mapped to why it is not running now, or None while it runs."""
        return {
            s.worker.name: (s.failure if s.failure else "ended" if s.finished else None) for s in self._states
        }

    async def _keep_running(self, state: _State) -> None:
        name = state.worker.name
        metrics.WORKER_UP.labels(name).set(1)
        while not state.stop.is_set():
            started = time.monotonic()
            try:
                await state.worker.run(state.stop)
                if not state.stop.is_set():
                    log.warning("worker ended on its own", worker=name)
                    state.finished = True
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a supervised worker must come back, whatever broke it; it is logged
                if time.monotonic() - started > self.restart_max_s:
                    state.restarts = 0  # it ran well for a while: start the backoff afresh
                state.restarts += 1
                state.failure = f"restarting after {type(e).__name__}: {e}"
                metrics.WORKER_UP.labels(name).set(0)
                metrics.WORKER_RESTARTS.labels(name).inc()
                delay = min(self.restart_max_s, self.restart_initial_s * 2 ** (state.restarts - 1))
                log.exception(
                    "worker failed; restarting", worker=name, delay_s=delay, restarts=state.restarts
                )
                try:
                    await asyncio.wait_for(state.stop.wait(), delay)
                except TimeoutError:
                    pass
                state.failure = None
                metrics.WORKER_UP.labels(name).set(1)
        metrics.WORKER_UP.labels(name).set(0)

    async def _stop(self, states: Sequence[_State]) -> None:
        for state in states:
            state.stop.set()
        tasks = [s.task for s in states if s.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        for task in late:
            log.warning("did not drain in time; cancelled", worker=task.get_name())
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
