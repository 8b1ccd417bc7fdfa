"""The supervisor: a crashed worker comes back after a pause and is reported meanwhile; one stop ends all."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from mlcd.bus.runtime import RetryPolicy
from mlcd.errors import AdapterUnavailable, ConfigError, Forbidden, TemporaryError
from mlcd.supervisor import Supervisor, Worker


async def test_a_worker_that_fails_is_restarted_reported_and_counted() -> None:
    runs: list[int] = []
    running = asyncio.Event()

    async def flaky(stop: asyncio.Event) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise AdapterUnavailable("broker down at start")
        running.set()
        await stop.wait()

    before = REGISTRY.get_sample_value("mlcd_worker_restarts_total", {"worker": "flaky-1"}) or 0.0
    supervisor = Supervisor([Worker("flaky-1", flaky)], restart_initial_s=0.01, restart_max_s=0.05)
    supervisor.start()
    try:
        await asyncio.wait_for(running.wait(), 10)
        assert supervisor.health() == {"flaky-1": None}
    finally:
        await supervisor.stop()
    assert len(runs) == 3
    assert REGISTRY.get_sample_value("mlcd_worker_restarts_total", {"worker": "flaky-1"}) == before + 2
    assert REGISTRY.get_sample_value("mlcd_worker_up", {"worker": "flaky-1"}) == 0.0


async def test_health_names_the_failure_while_the_worker_waits_to_restart() -> None:
    async def broken(stop: asyncio.Event) -> None:
        raise AdapterUnavailable("Kafka at 127.0.0.1:1 did not answer")

    supervisor = Supervisor([Worker("broken-1", broken)], restart_initial_s=30)
    supervisor.start()
    try:
        for _ in range(200):
            if supervisor.health()["broken-1"]:
                break
            await asyncio.sleep(0.01)
        assert supervisor.health()["broken-1"] == (
            "restarting after AdapterUnavailable: Kafka at 127.0.0.1:1 did not answer"
        )
    finally:
        await supervisor.stop()  # a stop during the restart pause ends it at once


async def test_the_relay_drains_after_the_other_workers_stopped() -> None:
    order: list[str] = []

    def worker(name: str) -> Worker:
        async def run(stop: asyncio.Event) -> None:
            await stop.wait()
            order.append(name)

        return Worker(name, run, drains_last=name == "outbox-relay")

    supervisor = Supervisor([worker("outbox-relay"), worker("consumer"), worker("timer")])
    supervisor.start()
    await asyncio.sleep(0)
    await supervisor.stop()
    assert order[-1] == "outbox-relay" and set(order) == {"outbox-relay", "consumer", "timer"}


def test_only_temporary_errors_are_retried_and_retry_after_is_honoured() -> None:
    policy = RetryPolicy(max_attempts=5, initial_s=0.2, max_s=10)
    assert policy.retries(AdapterUnavailable("down"))
    assert not policy.retries(ConfigError("MLCD_S3_ENDPOINT"))
    assert not policy.retries(Forbidden("the token may not trigger pipelines"))
    assert not policy.retries(ValueError("path in endpoint is not allowed"))
    assert policy.delay(1) == 0.2
    assert policy.delay(1, TemporaryError("429", retry_after_s=7)) == 7
    assert policy.delay(8, TemporaryError("429", retry_after_s=1)) == 10
