"""`mlcd demo` (what `make demo` runs) plays the whole story; the event journal shows every step."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mlcd.store import database, outbox
from tests.support import processes

REPO = Path(__file__).resolve().parents[2]
MLCD = str(Path(sys.executable).parent / "mlcd")

EXPECTED_AT_LEAST = {
    "mlcd.git.pushed.v1": 1,
    "mlcd.training.pipeline_published.v1": 1,
    "mlcd.data.arrived.v1": 3,
    "mlcd.data.validated.v1": 2,
    "mlcd.data.rejected.v1": 1,
    "mlcd.training.started.v1": 2,
    "mlcd.training.succeeded.v1": 2,
    "mlcd.promotion.gate_opened.v1": 2,
    "mlcd.promotion.approved.v1": 2,
    "mlcd.serving.rollout_started.v1": 2,
    "mlcd.serving.rollout_step_completed.v1": 2,
    "mlcd.serving.rollout_succeeded.v1": 2,
    "mlcd.monitoring.alert_fired.v1": 1,
    "mlcd.serving.rollback_requested.v1": 1,
    "mlcd.serving.rolled_back.v1": 1,
}


def _journal(db: Path) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        engine = database.create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with engine.connect() as conn:
                rows = await outbox.journal(conn, limit=10_000, ascending=True)
        finally:
            await engine.dispose()
        return [event for _, event in rows]

    return asyncio.run(read())


@pytest.mark.slow
def test_demo_plays_the_whole_story(tmp_path: Path) -> None:
    port = processes.free_port()
    # A fresh user's shell: nothing MLflow-related inherited from the test session's own servers.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCD_"))}
    env = {**inherited, "MLCD_HOME": str(tmp_path), "MLCD_HTTP_PORT": str(port)}
    result = subprocess.run([MLCD, "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "demo complete" in result.stdout
    report = (tmp_path / "demo-report.md").read_text()
    assert "Outcome: **complete**" in report

    (db,) = tmp_path.glob("demo/*/mlcd.db")
    journal = _journal(db)
    seen = Counter(str(e["type"]) for e in journal)
    missing = {t: n for t, n in EXPECTED_AT_LEAST.items() if seen[t] < n}
    assert missing == {}, f"journal lacks {missing}; saw {dict(seen)}"

    rejected = next(e for e in journal if e["type"] == "mlcd.data.rejected.v1")
    corrupt_uri = str(rejected["data"]["uri"])  # type: ignore[index]
    trained_on = [str(e["data"]["data_uri"]) for e in journal if e["type"] == "mlcd.training.started.v1"]  # type: ignore[index]
    assert corrupt_uri not in trained_on, "the corrupt batch must never be trained"

    rolled_back = next(e for e in journal if e["type"] == "mlcd.serving.rolled_back.v1")
    succeeded = [e for e in journal if e["type"] == "mlcd.serving.rollout_succeeded.v1"]
    assert rolled_back["data"]["from_version"] == succeeded[-1]["data"]["model_version"]  # type: ignore[index]
    assert rolled_back["data"]["to_version"] == succeeded[0]["data"]["model_version"]  # type: ignore[index]
