"""`/status` is public: however many ask at once, the outside systems are pinged once a round, all at once."""

from __future__ import annotations

import asyncio

from mlcd.status import AdapterHealth


class _System:
    def __init__(self, error: Exception | None = None) -> None:
        self.pings = 0
        self.error = error
        self.pinged, self.release = asyncio.Event(), asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        self.pinged.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error


async def test_callers_arriving_during_a_round_share_it_and_a_fresh_answer_is_reused() -> None:
    registry, code_host = _System(), _System(RuntimeError("401 Unauthorized"))
    health = AdapterHealth({"registry": registry, "code_host": code_host}, interval_s=30, fresh_s=60)

    callers = [asyncio.create_task(health.current()) for _ in range(20)]
    await asyncio.wait_for(asyncio.gather(registry.pinged.wait(), code_host.pinged.wait()), 5)
    assert (registry.pings, code_host.pings) == (1, 1), "both pinged at once, once"
    registry.release.set()
    code_host.release.set()
    answers = await asyncio.gather(*callers)

    assert answers == [{"registry": None, "code_host": "RuntimeError: 401 Unauthorized"}] * 20
    assert await health.current() == answers[0]
    assert (registry.pings, code_host.pings) == (1, 1), "an answer younger than fresh_s is reused"


async def test_an_answer_older_than_fresh_s_pings_again_and_a_hung_system_is_named() -> None:
    hung = _System()
    health = AdapterHealth({"serving": hung}, interval_s=30, timeout_s=0.05, fresh_s=0)

    assert await health.current() == {"serving": "no answer within 0.05s"}
    assert await health.current() == {"serving": "no answer within 0.05s"}
    assert hung.pings == 2
