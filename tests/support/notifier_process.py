"""The notifier service as a process of its own, from the MLCD_* environment, for kill -9 tests:
`python -m tests.support.notifier_process` (what `mlcd serve notifier` runs, without its HTTP face)."""

from __future__ import annotations

import asyncio
import sys

from mlcd import bootstrap, logs, process
from mlcd.adapters import gitlab
from mlcd.config import Settings
from mlcd.notifier import handlers
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import database


async def main() -> int:
    settings = Settings.load()
    logs.configure("INFO", settings.secret_values())
    ports = {"policies": PolicyBook(settings.policies_dir), "code_host": gitlab.build(settings)}
    host = ServiceHost(
        settings,
        [handlers.SERVICE],
        ports,
        bus=bootstrap.build_bus(settings),
        engine=database.create_engine(settings.effective_database_url),
    )
    return await process.run(lambda: bootstrap.System(settings, host))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
