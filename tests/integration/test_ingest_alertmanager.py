"""A real Alertmanager delivers a drift alert to /hooks/alertmanager; it becomes AlertFired for the model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.memory import MemoryBus
from mlcd.store import migrate, outbox
from mlcd.store.database import create_engine
from tests.support import alertmanager, flows, ingest_app

pytestmark = pytest.mark.slow


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[alertmanager.Alertmanager]:
    with alertmanager.running(tmp_path / "am", ingest_app.ALERTMANAGER_TOKEN) as running:
        yield running


async def journal_of(engine: AsyncEngine, event_type: str, timeout_s: float) -> list[dict[str, object]]:
    async def journaled() -> list[dict[str, object]]:
        async with engine.connect() as conn:
            return [entry for _, entry in await outbox.journal(conn, event_type=event_type)]

    return await flows.eventually(journaled, event_type, timeout_s)


async def test_alert_added_to_alertmanager_reaches_mlcd_as_a_fired_model_alert(
    manager: alertmanager.Alertmanager, sqlite_url: str
) -> None:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    app = ingest_app.build(ingest_app.settings(), MemoryBus(events.TOPICS), engine)
    try:
        async with ingest_app.serving(app, manager.receiver_port):
            await asyncio.to_thread(
                manager.add_alert,
                {"alertname": "FeatureDrift", "model": "wine_quality", "severity": "warning"},
                {"summary": "PSI 0.31 on alcohol"},
            )
            [fired] = await journal_of(engine, events.AlertFired.type, timeout_s=30)
    finally:
        await engine.dispose()
    assert fired["subject"] == "wine_quality"
    assert fired["data"]["alert"] == "FeatureDrift"  # type: ignore[index]
    assert fired["data"]["severity"] == "warning"  # type: ignore[index]
    assert fired["data"]["annotations"] == {"summary": "PSI 0.31 on alcohol"}  # type: ignore[index]
