"""`mlcd demo` with MLCD_OPENLINEAGE_URL and MLCD_MLMD_STORE set: `mlcd up` starts the lineage exporter, and
the chain the real services play reaches a loopback OpenLineage receiver (read with the client's models)
and an ML Metadata store (read back with MLMD's own API). The demo stops its services as soon as the last
event is journaled, so the journal is then replayed through the exporter, as a redelivery would: what had
arrived arrives again unchanged, and every run of the whole chain has its START and one end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mlcd import events
from mlcd.adapters.openlineage import OpenLineageExport
from mlcd.lineage_export import handlers
from mlcd.store import database, outbox
from mlcd.store.unit_of_work import UnitOfWork
from tests.support import lineage_receiver, processes
from tests.support.lineage_receiver import LineageReceiver

REPO = Path(__file__).resolve().parents[2]
MLCD = str(Path(sys.executable).parent / "mlcd")
MLMD_PYTHON = REPO / ".venv-mlmd" / "bin" / "python"
READBACK = REPO / "tests" / "support" / "mlmd_readback.py"
MODEL = "wine_quality"
ENDS = {"COMPLETE", "FAIL"}


def _replay(db: Path, url: str) -> list[dict[str, Any]]:
    """Every journaled event through the exporter, oldest first, as the runtime would redeliver them."""

    async def replay() -> list[dict[str, Any]]:
        engine = database.create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with engine.connect() as conn:
                rows = await outbox.journal(conn, limit=10_000, ascending=True)
            store = OpenLineageExport(url, "mlcd")
            journal = [event for _, event in rows]
            for body in journal:
                kind = events.PAYLOAD_TYPES.get(str(body["type"]))
                if kind is None:
                    continue
                event = events.Envelope[kind].model_validate(body)  # type: ignore[valid-type]
                uow = UnitOfWork(engine, "mlcd/lineage-export", event, group="mlcd-lineage-export")
                await handlers.on_chain_event(event, uow, lineage=[store])
            await store.close()
            return journal
        finally:
            await engine.dispose()

    return asyncio.run(replay())


def _runs(received: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for body in received:
        runs[(body["job"]["name"], body["run"]["runId"])].append(body["eventType"])
    return dict(runs)


def _key(body: dict[str, Any]) -> tuple[str, str, str]:
    return (body["run"]["runId"], body["eventType"], body["run"]["facets"]["mlcd"]["eventId"])


@pytest.mark.slow
@pytest.mark.timeout(900)  # the demo alone took 131-212 s here, and longer on a machine under load
def test_the_demo_chain_reaches_openlineage_and_ml_metadata(tmp_path: Path) -> None:
    store = tmp_path / "mlmd.sqlite"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCD_"))}
    with LineageReceiver() as receiver:
        env = {
            **inherited,
            "MLCD_HOME": str(tmp_path),
            "MLCD_HTTP_PORT": str(processes.free_port()),
            "MLCD_OPENLINEAGE_URL": receiver.url,
            "MLCD_MLMD_STORE": f"sqlite:///{store}",
            "MLCD_MLMD_PYTHON": str(MLMD_PYTHON),
        }
        result = subprocess.run(
            [MLCD, "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        live = receiver.received()

        # while the demo ran: the first version's whole chain, each event as the client's models read it
        assert live and all(lineage_receiver.round_trips(body) for body in live)
        assert [p for body in live for p in lineage_receiver.spec_problems(body)] == []
        first_runs = _runs(live)
        for job in ("validation", "training", "gate", "rollout"):
            assert any(
                name == f"{MODEL}.{job}" and states[0] == "START" and states[-1] == "COMPLETE"
                for (name, _), states in first_runs.items()
            ), f"no finished {job} run arrived while the demo ran: {first_runs}"

        (db,) = tmp_path.glob("demo/*/mlcd.db")
        journal = _replay(db, receiver.url)
        replayed = receiver.received()[len(live) :]

    # a redelivery is idempotent at the receiver: what arrived live arrives again unchanged
    again = {_key(b): b for b in replayed}
    assert all(again[_key(b)] == b for b in live)

    runs = _runs(replayed)
    for (job, run_id), states in runs.items():
        assert states[0] == "START" and len([s for s in states if s in ENDS]) == 1, (job, run_id, states)
    ends = sorted((job.removeprefix(f"{MODEL}."), states[-1]) for (job, _), states in runs.items())
    assert ends.count(("validation", "COMPLETE")) == 2 and ("validation", "FAIL") in ends
    assert ends.count(("training", "COMPLETE")) == 2 and ends.count(("rollout", "COMPLETE")) == 2
    assert ("rollback", "COMPLETE") in ends

    rolled_back = next(e for e in journal if e["type"] == "mlcd.serving.rolled_back.v1")["data"]
    trained = [e["data"] for e in journal if e["type"] == "mlcd.training.succeeded.v1"]
    outputs = {
        (d["namespace"], d["name"])
        for b in replayed
        if b["job"]["name"] == f"{MODEL}.training" and b["eventType"] == "COMPLETE"
        for d in b["outputs"]
    }
    assert outputs == {("mlflow", f"models:/{MODEL}/{t['model_version']}") for t in trained}
    rollback = next(
        b for b in replayed if b["job"]["name"] == f"{MODEL}.rollback" and b["eventType"] == "COMPLETE"
    )
    assert [d["name"] for d in rollback["inputs"]] == [f"models:/{MODEL}/{rolled_back['from_version']}"]
    assert [d["name"] for d in rollback["outputs"]] == [f"models:/{MODEL}/{rolled_back['to_version']}"]

    # ML Metadata, written by the exporter `mlcd up` ran: each training run read its batch, made its version
    out = subprocess.run(
        [str(MLMD_PYTHON), "-I", str(READBACK), str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(out.stdout)
    runs_made = [
        e for e in found["executions"] if e["type"] == "mlcd.TrainingRun" and e["state"] == "COMPLETE"
    ]
    assert runs_made, found["executions"]
    for run in runs_made:
        linked = {
            (ev["type"], ev["artifact"].split(":", 2)[1])
            for ev in found["events"]
            if ev["execution"] == run["name"]
        }
        assert linked == {("INPUT", "data batch"), ("OUTPUT", "model version")}, linked
    (context,) = found["contexts"]
    assert context["name"] == MODEL and context["executions"] == sorted(
        e["name"] for e in found["executions"]
    )
