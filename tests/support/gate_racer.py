"""A process that decides gates for the race test: `python -m tests.support.gate_racer URL ACTOR DECISION`.

It connects, prints "ready", then for each gate id read from stdin decides it at once through
`mlcd.gatekeeper.gate_decisions.decide` in its own transaction and prints the outcome as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from mlcd import logs
from mlcd.bus.runtime import unit_of_work
from mlcd.gatekeeper import gate_decisions
from mlcd.store import gates
from mlcd.store.database import create_engine


async def _anyone(_: gates.Gate) -> str | None:
    return None


async def main(url: str, actor: str, decision: str) -> None:
    logs.configure("WARNING", stream=sys.stderr)  # stdout carries the answers only
    engine = create_engine(url)
    async with engine.connect():
        pass
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        async with unit_of_work(engine, "mlcd/race") as uow:
            result = await gate_decisions.decide(
                uow,
                line,
                actor=actor,
                via="api",
                decision="approve" if decision == "approve" else "reject",
                reason=f"{actor} raced",
                authorise=_anyone,
            )
        print(json.dumps({"gate": line, "status": result.status}), flush=True)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
