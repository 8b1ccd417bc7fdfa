"""Live progress per model on a terminal (rich), read from the event journal."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd.store import outbox

_STAGES = {
    "data": "data",
    "training": "training",
    "promotion": "promotion",
    "serving": "serving",
    "monitoring": "monitoring",
}


def summarise(journal: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per model: the newest event of each stage (journal given oldest first)."""
    models: dict[str, dict[str, str]] = {}
    for event in journal:
        model = event.get("subject")
        domain = str(event["type"]).split(".")[1]
        if not model or domain not in _STAGES:
            continue
        row = models.setdefault(str(model), {})
        row[_STAGES[domain]] = str(event["type"]).split(".")[2]
        row["last"] = str(event["time"])[11:19]
    return models


def render(models: dict[str, dict[str, str]]) -> Table:
    table = Table(title="mlcd · live progress", expand=True)
    for column in ("model", *_STAGES.values(), "last event"):
        table.add_column(column)
    for model, row in sorted(models.items()):
        table.add_row(model, *(row.get(stage, "·") for stage in _STAGES.values()), row.get("last", ""))
    return table


class ProgressView:
    def __init__(self, engine: AsyncEngine, console: Console | None = None) -> None:
        self.engine = engine
        self.console = console or Console(stderr=True)

    async def run(self, stop: asyncio.Event) -> None:
        with Live(render({}), console=self.console, refresh_per_second=2) as live:
            while not stop.is_set():
                async with self.engine.connect() as conn:
                    rows = await outbox.journal(conn, limit=500)
                live.update(render(summarise([event for _, event in reversed(rows)])))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
