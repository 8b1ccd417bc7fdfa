"""The lineage exporter: a journaled chain of events reaches an OpenLineage receiver as paired run events
(read back with the `openlineage-python` client's models) and an ML Metadata store (read back with MLMD's
own API, in the .venv-mlmd interpreter); a redelivered chain changes neither."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import bootstrap, events, ports
from mlcd.adapters.mlmd import MlmdExport
from mlcd.adapters.openlineage import OpenLineageExport, run_id
from mlcd.config import Settings, mlmd_connection
from mlcd.errors import ConfigError, PermanentError, TemporaryError
from mlcd.lineage_export import handlers, steps
from mlcd.store import outbox
from mlcd.store.unit_of_work import UnitOfWork
from tests.support import lineage_receiver, processes
from tests.support.lineage_receiver import LineageReceiver

REPO = Path(__file__).resolve().parents[2]
MLMD_PYTHON = REPO / ".venv-mlmd" / "bin" / "python"
READBACK = REPO / "tests" / "support" / "mlmd_readback.py"
MODEL = "wine_quality"
URI = "s3://landing/wine_quality/batch-07.csv"
ETAG = "9b2cf535f27731c974343645a3985328"
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
BATCH = ("s3://landing", "wine_quality/batch-07.csv")
VERSION_7 = ("mlflow", "models:/wine_quality/7")


def _chain() -> list[events.Envelope[Any]]:
    """Version 7's whole chain as the services journal it, a rejected batch and a failed run beside it."""
    payloads: list[events.Payload] = [
        events.DataArrived(
            model=MODEL, bucket="landing", key=BATCH[1], uri=URI, size=2048, etag=ETAG, author="uploader"
        ),
        events.DataValidated(
            model=MODEL,
            uri=URI,
            rows=1599,
            suite="wine",
            result_uri="s3://landing/.mlcd/validation/batch-07.json",
            expectations=[
                events.ExpectationResult(
                    expectation="expect_column_values_to_not_be_null", column="pH", success=True
                )
            ],
        ),
        events.TrainingStarted(
            model=MODEL,
            run_id="run-1",
            run_name="wq-run-1",
            pipeline_version="wq-abc",
            data_uri=URI,
            trigger_event_id="e1",
        ),
        events.TrainingSucceeded(
            model=MODEL,
            run_id="run-1",
            model_version="7",
            metrics={"accuracy": 0.91},
            data_uri=URI,
            commit="abc123",
        ),
        events.GateOpened(
            model=MODEL,
            gate_id="g-7",
            model_version="7",
            champion_version="6",
            rules=[events.RuleOutcome(name="better", expression="candidate.accuracy > 0.8", passed=True)],
            approvals_required=1,
            approver_groups=["oncall"],
            expires_at=START + timedelta(days=1),
        ),
        events.GateDecisionRequested(gate_id="g-7", decision="approve", actor="bob", via="cli", model=MODEL),
        events.PromotionApproved(model=MODEL, model_version="7", gate_id="g-7", approved_by=["bob"]),
        events.RolloutStarted(model=MODEL, model_version="7", previous_version="6", steps=[10, 100]),
        events.RolloutStepCompleted(
            model=MODEL, model_version="7", traffic_percent=10, analysis={"success-rate": 0.99}
        ),
        events.RolloutSucceeded(model=MODEL, model_version="7", previous_version="6"),
        events.RolledBack(model=MODEL, from_version="7", to_version="6", reason="drift alert"),
        # beside it: a corrupt batch rejected, a run that failed, a version rejected without a gate
        events.DataArrived(
            model=MODEL,
            bucket="landing",
            key="wine_quality/bad.csv",
            uri="s3://landing/wine_quality/bad.csv",
            size=9,
            etag="e-bad",
        ),
        events.DataRejected(
            model=MODEL, uri="s3://landing/wine_quality/bad.csv", reason="not a CSV or Parquet file"
        ),
        events.TrainingStarted(
            model=MODEL,
            run_id="run-2",
            run_name="wq-run-2",
            pipeline_version="wq-abc",
            data_uri=URI,
            trigger_event_id="e1",
        ),
        events.TrainingFailed(model=MODEL, run_id="run-2", reason="task train failed"),
        events.PromotionRejected(model=MODEL, model_version="8", reason="accuracy below the champion's"),
    ]
    return [
        events.new_event(p, source="mlcd/test", id=f"e{i}", time=START + timedelta(minutes=i))
        for i, p in enumerate(payloads)
    ]


async def _journal(engine: AsyncEngine, chain: Sequence[events.Envelope[Any]]) -> None:
    async with engine.begin() as conn:
        await outbox.add(conn, list(chain), sent=True)


async def _export(
    engine: AsyncEngine, chain: Sequence[events.Envelope[Any]], store: ports.LineageExport
) -> None:
    try:
        for event in chain:
            uow = UnitOfWork(engine, "mlcd/lineage-export", event, group="mlcd-lineage-export")
            await handlers.on_chain_event(event, uow, lineage=[store])
    finally:
        await store.close()


def _runs(received: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(job, run id) → the states its events carried, in order."""
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for body in received:
        runs[(body["job"]["name"], body["run"]["runId"])].append(body["eventType"])
    return dict(runs)


def _datasets(received: list[dict[str, Any]], job: str, state: str, side: str) -> list[tuple[str, str]]:
    """Of the first run event of `job` in `state`: its inputs' or outputs' (namespace, name)."""
    body = next(b for b in received if b["job"]["name"] == f"{MODEL}.{job}" and b["eventType"] == state)
    return [(d["namespace"], d["name"]) for d in body[side]]


async def test_a_chain_reaches_openlineage_as_paired_runs_the_client_reads(engine: AsyncEngine) -> None:
    chain = _chain()
    await _journal(engine, chain)
    with LineageReceiver() as receiver:
        await _export(engine, chain, OpenLineageExport(receiver.url, "mlcd"))
        received = receiver.received()
        assert all(lineage_receiver.round_trips(body) for body in received)
        assert [p for body in received for p in lineage_receiver.spec_problems(body)] == []
        broken = {**received[0], "eventType": "DONE", "run": {"facets": received[0]["run"]["facets"]}}
        assert len(lineage_receiver.spec_problems(broken)) == 2  # the check itself can fail

        by_job: dict[str, list[list[str]]] = defaultdict(list)
        for (job, _), states in _runs(received).items():
            by_job[job.removeprefix(f"{MODEL}.")].append(states)
        assert sorted(by_job["validation"]) == [["START", "COMPLETE"], ["START", "FAIL"]]
        assert sorted(by_job["training"]) == [["START", "COMPLETE"], ["START", "FAIL"]]
        assert sorted(by_job["gate"]) == [["START", "FAIL"], ["START", "RUNNING", "COMPLETE"]]
        # the rollout had succeeded before the drift rollback: it stays complete; the rollback is a run
        assert by_job["rollout"] == [["START", "RUNNING", "COMPLETE"]]
        assert by_job["rollback"] == [["START", "COMPLETE"]]

        assert _datasets(received, "training", "COMPLETE", "inputs") == [BATCH]
        assert _datasets(received, "training", "COMPLETE", "outputs") == [VERSION_7]
        assert _datasets(received, "gate", "START", "inputs") == [VERSION_7]
        assert _datasets(received, "rollback", "COMPLETE", "outputs") == [
            ("mlflow", "models:/wine_quality/6")
        ]
        validated = next(
            b for b in received if b["job"]["name"].endswith("validation") and b["eventType"] == "COMPLETE"
        )
        (batch,) = validated["inputs"]
        assert batch["facets"]["version"]["datasetVersion"] == ETAG
        assertions = batch["inputFacets"]["dataQualityAssertions"]["assertions"]
        assert assertions == [
            {
                "assertion": "expect_column_values_to_not_be_null",
                "column": "pH",
                "params": {},
                "success": True,
            }
        ]
        failed = next(
            b for b in received if b["job"]["name"].endswith("training") and b["eventType"] == "FAIL"
        )
        assert failed["run"]["facets"]["errorMessage"]["message"] == "task train failed"

        # a redelivered chain posts the very same run events: same run ids, same bodies
        await _export(engine, chain, OpenLineageExport(receiver.url, "mlcd"))
        again = receiver.received()[len(received) :]
        assert again == received


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_an_unreachable_or_refusing_endpoint_is_retried_or_dead_lettered(engine: AsyncEngine) -> None:
    chain = _chain()[:1]
    with LineageReceiver(fail_first=1) as receiver:
        with pytest.raises(TemporaryError, match="503"):
            await _export(engine, chain, OpenLineageExport(receiver.url, "mlcd"))
        await _export(engine, chain, OpenLineageExport(receiver.url, "mlcd"))
        assert [b["eventType"] for b in receiver.received()] == ["START"]
    with LineageReceiver() as receiver, pytest.raises(PermanentError, match="404"):
        await _export(engine, chain, OpenLineageExport(receiver.url + "/not-marquez", "mlcd"))


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_an_end_whose_beginning_is_not_journaled_yet_is_retried(engine: AsyncEngine) -> None:
    validated = _chain()[1]
    with LineageReceiver() as receiver:
        with pytest.raises(TemporaryError, match="no arrived event"):
            await _export(engine, [validated], OpenLineageExport(receiver.url, "mlcd"))
        assert receiver.received() == []


def _readback(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(MLMD_PYTHON), "-I", str(READBACK), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_chain_is_written_to_ml_metadata_once(engine: AsyncEngine, tmp_path: Path) -> None:
    chain = _chain()
    await _journal(engine, chain)
    path = tmp_path / "mlmd.sqlite"
    store = MlmdExport(MLMD_PYTHON, {"sqlite": {"path": str(path)}})
    try:
        await _export(engine, chain, store)
        first = _readback(path)
        await _export(engine, chain, store)  # redelivered
    finally:
        await store.close()
    found = _readback(path)
    assert found == first

    assert found["artifact_types"] == ["mlcd.DataBatch", "mlcd.ModelVersion", "mlcd.ValidationResult"]
    assert found["execution_types"] == [
        "mlcd.Gate",
        "mlcd.Rollback",
        "mlcd.Rollout",
        "mlcd.TrainingRun",
        "mlcd.Validation",
    ]
    assert found["context_types"] == ["mlcd.Model"]
    states = sorted((e["type"], e["state"]) for e in found["executions"])
    assert states == [
        ("mlcd.Gate", "COMPLETE"),
        ("mlcd.Gate", "FAILED"),
        ("mlcd.Rollback", "COMPLETE"),
        ("mlcd.Rollout", "COMPLETE"),
        ("mlcd.TrainingRun", "COMPLETE"),
        ("mlcd.TrainingRun", "FAILED"),
        ("mlcd.Validation", "COMPLETE"),
        ("mlcd.Validation", "FAILED"),
    ]
    batch = f"mlcd:data batch:s3://landing/wine_quality/batch-07.csv@{ETAG}"
    version = "mlcd:model version:mlflow/models:/wine_quality/7@7"
    trained = "mlcd:training:e2"
    assert {(e["type"], e["artifact"]) for e in found["events"] if e["execution"] == trained} == {
        ("INPUT", batch),
        ("OUTPUT", version),
    }
    failed_run = {
        (e["type"], e["artifact"]) for e in found["events"] if e["execution"] == "mlcd:training:e13"
    }
    assert failed_run == {("INPUT", batch)}  # the batch its start read, pinned, not a second unpinned one
    artifacts = {a["name"]: a for a in found["artifacts"]}
    assert sorted(a["type"] for a in artifacts.values()) == [
        "mlcd.DataBatch",
        "mlcd.DataBatch",
        "mlcd.ModelVersion",
        "mlcd.ModelVersion",
        "mlcd.ModelVersion",
        "mlcd.ValidationResult",
    ]
    assert artifacts[batch]["uri"] == URI and artifacts[batch]["properties"]["version"] == ETAG
    assert artifacts[version]["uri"] == "models:/wine_quality/7"
    gate = next(e for e in found["executions"] if e["name"] == "mlcd:gate:e4")
    assert gate["properties"]["actor"] == "bob" and gate["properties"]["via"] == "cli"
    rejected = next(
        e for e in found["executions"] if e["type"] == "mlcd.Validation" and e["state"] == "FAILED"
    )
    assert rejected["properties"]["error"] == "not a CSV or Parquet file"
    (context,) = found["contexts"]
    assert context["name"] == MODEL
    assert context["executions"] == sorted(e["name"] for e in found["executions"])
    assert batch in context["artifacts"] and version in context["artifacts"]


def test_the_exporter_starts_only_where_it_has_somewhere_to_write(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCD_")}
    env |= {"MLCD_HOME": str(tmp_path), "MLCD_HTTP_PORT": str(processes.free_port())}
    mlcd = str(Path(sys.executable).parent / "mlcd")
    refused = subprocess.run(
        [mlcd, "serve", "lineage-export"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: lineage-export has nowhere to write: set MLCD_OPENLINEAGE_URL or MLCD_MLMD_STORE"
    ]
    assert mlmd_connection("sqlite", tmp_path) == {
        "sqlite": {"path": str((tmp_path / "mlmd.sqlite").resolve())}
    }
    unset = Settings(home=tmp_path)
    with pytest.raises(ConfigError, match="MLCD_OPENLINEAGE_URL or MLCD_MLMD_STORE"):
        bootstrap.system(unset, [bootstrap.service("lineage-export")], http=False)
    assert "lineage-export" in bootstrap.SERVICES
    assert handlers.configured(Settings(home=tmp_path, openlineage_url="http://marquez:5000"))
    no_venv = Settings(
        home=tmp_path, mlmd_store="sqlite", mlmd_python=tmp_path / "no-venv" / "bin" / "python"
    )
    with pytest.raises(
        ConfigError, match=r"MLCD_MLMD_PYTHON .* does not exist: create it with `make mlmd-venv`"
    ):
        bootstrap.system(no_venv, [bootstrap.service("lineage-export")], http=False)
    for setting, value, says in [
        ("MLCD_MLMD_STORE", "mysql://mlmd:s3cr3t@mysql:3306/mlmd", "use MLCD_MLMD_PASSWORD"),
        ("MLCD_OPENLINEAGE_URL", "http://ol:s3cr3t@marquez:5000", "use MLCD_OPENLINEAGE_API_KEY"),
    ]:
        env |= {setting: value}
        refused = subprocess.run(
            [mlcd, "serve", "lineage-export"], env=env, capture_output=True, text=True, timeout=120
        )
        env.pop(setting)
        assert refused.returncode != 0 and says in refused.stderr and "s3cr3t" not in refused.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_late_redelivery_names_the_run_it_ended_not_a_newer_one(engine: AsyncEngine) -> None:
    """Version 7 rolled out, then rolled out again later: the first rollout's end, redelivered after the
    second began, still ends the first run."""
    first = events.RolloutStarted(model=MODEL, model_version="7", steps=[100])
    done = events.RolloutSucceeded(model=MODEL, model_version="7")
    chain = [
        events.new_event(first, source="mlcd/test", id="r1", time=START),
        events.new_event(done, source="mlcd/test", id="s1", time=START + timedelta(minutes=1)),
        events.new_event(first, source="mlcd/test", id="r2", time=START + timedelta(minutes=9)),
    ]
    await _journal(engine, chain)
    with LineageReceiver() as receiver:
        await _export(engine, [chain[1]], OpenLineageExport(receiver.url, "mlcd"))
        (ended,) = receiver.received()
    assert ended["eventType"] == "COMPLETE" and ended["run"]["runId"] == run_id("r1") != run_id("r2")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_dead_mlmd_writer_is_replaced_and_a_missing_one_named(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    chain = _chain()
    await _journal(engine, chain)
    path = tmp_path / "mlmd.sqlite"
    store = MlmdExport(MLMD_PYTHON, {"sqlite": {"path": str(path)}})
    try:
        await store.export(steps.of_event(chain[0], {}))
        child = store._child
        assert child is not None
        child.kill()
        await child.wait()
        await _export(engine, chain[1:2], store)  # a new writer finishes the validation
    finally:
        await store.close()
    (validation,) = [e for e in _readback(path)["executions"] if e["type"] == "mlcd.Validation"]
    assert validation["state"] == "COMPLETE"

    missing = MlmdExport(tmp_path / "no-venv" / "bin" / "python", {"sqlite": {"path": str(path)}})
    with pytest.raises(ConfigError, match=r"MLCD_MLMD_PYTHON .*no-venv.*make mlmd-venv"):
        await missing.export(steps.of_event(chain[0], {}))


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_merge_request_decision_joins_its_gate_and_one_naming_no_gate_is_skipped(
    engine: AsyncEngine,
) -> None:
    """A `/mlcd approve` comment names the gate, not the model (its subject is the GitLab project)."""
    gate = _chain()[4]
    comment = events.GateDecisionRequested(
        gate_id="g-7", decision="approve", actor="bob", via="gitlab", project="ml/wine", merge_request_iid=3
    )
    typo = comment.model_copy(update={"gate_id": "g-77"})
    decided = [
        events.new_event(
            comment, source="mlcd/ingest", id="d1", subject="ml/wine", time=START + timedelta(hours=1)
        ),
        events.new_event(
            typo, source="mlcd/ingest", id="d2", subject="ml/wine", time=START + timedelta(hours=2)
        ),
    ]
    await _journal(engine, [gate, *decided])
    with LineageReceiver() as receiver:
        await _export(engine, decided, OpenLineageExport(receiver.url, "mlcd"))
        (joined,) = receiver.received()
    assert joined["eventType"] == "RUNNING" and joined["job"]["name"] == f"{MODEL}.gate"
    assert joined["run"]["runId"] == run_id(gate.id)
    assert joined["run"]["facets"]["mlcd"]["facts"]["via"] == "gitlab"


async def test_a_hung_mlmd_writer_is_given_up_and_replaced(tmp_path: Path) -> None:
    """A writer that stops answering (SIGSTOP) fails the export as an outage and is replaced; one whose
    export was cancelled is replaced too, so no answer is ever read for the wrong request."""
    chain = _chain()
    path = tmp_path / "mlmd.sqlite"
    store = MlmdExport(MLMD_PYTHON, {"sqlite": {"path": str(path)}}, timeout_s=2)
    try:
        await store.export(steps.of_event(chain[0], {}))
        for how in ("timeout", "cancel"):
            hung = store._child
            assert hung is not None
            os.kill(hung.pid, signal.SIGSTOP)
            if how == "timeout":
                with pytest.raises(TemporaryError, match="did not answer in 2 s"):
                    await store.export(steps.of_event(chain[1], {"arrived": chain[0].structured()}))
            else:
                task = asyncio.create_task(
                    store.export(steps.of_event(chain[1], {"arrived": chain[0].structured()}))
                )
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            try:
                assert await asyncio.wait_for(hung.wait(), 10) == -signal.SIGKILL
            finally:
                if hung.returncode is None:  # left running by the adapter: end it here
                    hung.kill()
                    await hung.wait()
            await store.export(steps.of_event(chain[0], {}))  # a new writer
            assert store._child is not None and store._child.pid != hung.pid
        await store.export(steps.of_event(chain[1], {"arrived": chain[0].structured()}))
    finally:
        await store.close()
    (validation,) = [e for e in _readback(path)["executions"] if e["type"] == "mlcd.Validation"]
    assert validation["state"] == "COMPLETE"
