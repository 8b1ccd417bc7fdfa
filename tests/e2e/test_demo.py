"""`mlcd demo` (what `make demo` runs) plays the whole story; the event journal shows every step."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mlcd import lineage
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
    _assert_lineage_is_complete(journal, [str(e["data"]["model_version"]) for e in succeeded])  # type: ignore[index]


def _assert_lineage_is_complete(journal: list[dict[str, object]], versions: list[str]) -> None:
    """Each rolled-out version's lineage holds every link of its chain, each link a journaled event."""
    by_id = {str(e["id"]): e for e in journal}
    for version in versions:
        found = lineage.of_version(journal, "wine_quality", version)
        assert found is not None and found.missing == [], found
        steps = [s.step for s in found.steps]
        for link in ("data batch", "validation", "training run", "model version", "gate", "promotion"):
            assert link in steps, f"version {version}: no {link} in {steps}"
        assert (
            steps.index("data batch")
            < steps.index("training run")
            < steps.index("gate")
            < steps.index("rollout")
        )
        assert all(by_id[s.id]["data"] == s.data for s in found.steps), "each step is its journaled event"
        # One chain from the batch's arrival to the rollout, across validator, trainer, gatekeeper (its
        # API approval) and the deployer's timer steps: the arrival's id is the correlation id of them all.
        arrival = next(s for s in found.steps if s.step == "data batch")
        in_chain = {
            "data batch",
            "validation",
            "training run",
            "model version",
            "gate",
            "promotion",
            "rollout",
        }
        chained = [s for s in found.steps if s.step in in_chain or s.step == "rollout step"]
        assert {s.correlation for s in chained} == {arrival.id} == {found.correlation}, [
            (s.step, s.correlation) for s in chained
        ]
    rolled_back_from = lineage.of_version(journal, "wine_quality", versions[-1])
    assert rolled_back_from is not None and rolled_back_from.steps[-1].step == "rollback"
    assert "away from this version" in rolled_back_from.steps[-1].summary


@pytest.mark.slow
def test_ctrl_c_during_the_demo_ends_it_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCD_"))}
    env = {**inherited, "MLCD_HOME": str(tmp_path), "MLCD_HTTP_PORT": str(processes.free_port())}
    output = tmp_path / "demo.out"
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [MLCD, "demo"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as a terminal's Ctrl-C reaches it: a shell may have started the test with SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        # the story has begun: the services serve and the first webhook went in
        processes.wait_until(lambda: b"a GitLab push" in output.read_bytes(), 180, "the story to start")
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    said = output.read_text()
    assert demo.returncode == 130, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert "demo INTERRUPTED: stopped by a signal before the story ended" in said
