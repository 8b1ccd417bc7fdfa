"""The kfp.Client orchestrator against a fake of the KFP v2beta1 REST API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.errors import AdapterUnavailable
from tests.fakes import kfp_api
from tests.support import processes

PACKAGE = "pipelineInfo:\n  name: wine-quality\n"


@pytest.fixture
def fake() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        yield server


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "wine_quality.yaml"
    path.write_text(PACKAGE)
    return path


@pytest.fixture
def orchestrator(fake: kfp_api.FakeKfp) -> KfpClientOrchestrator:
    return KfpClientOrchestrator(fake.url, timeout_s=5)


async def test_publish_uploads_a_version_named_after_the_commit_once(
    fake: kfp_api.FakeKfp, orchestrator: KfpClientOrchestrator, package: Path
) -> None:
    first = await orchestrator.publish("wine_quality", "0123abcd", package)
    again = await orchestrator.publish("wine_quality", "0123abcd", package)
    newer = await orchestrator.publish("wine_quality", "4567ef01", package)

    assert first == again
    assert first.version == "0123abcd" and first.pipeline_id and first.version_id
    assert newer.pipeline_id == first.pipeline_id
    assert len(fake.pipelines) == 1
    uploads = [c for c in fake.calls if c.path.endswith("/pipelines/upload_version")]
    assert [c.query["name"] for c in uploads] == ["0123abcd", "4567ef01"]
    assert await orchestrator.latest("wine_quality") == newer


async def test_latest_of_an_unknown_pipeline_is_none(orchestrator: KfpClientOrchestrator) -> None:
    assert await orchestrator.latest("never_published") is None


async def test_runs_are_found_by_name_and_carry_the_parameters(
    fake: kfp_api.FakeKfp, orchestrator: KfpClientOrchestrator, package: Path
) -> None:
    ref = await orchestrator.publish("wine_quality", "0123abcd", package)
    assert await orchestrator.find_run("mlcd-wine-1") is None

    started = await orchestrator.submit(
        "mlcd-wine-1", ref, {"data_uri": "s3://landing/b.csv", "n_estimators": 50}
    )
    found = await orchestrator.find_run("mlcd-wine-1")

    assert found == started and started.state == "RUNNING"
    body = fake.runs[started.run_id]
    assert body["runtime_config"]["parameters"] == {"data_uri": "s3://landing/b.csv", "n_estimators": 50}
    assert body["pipeline_version_reference"]["pipeline_version_id"] == ref.version_id


async def test_a_finished_run_reports_its_state_or_the_failing_task(
    fake: kfp_api.FakeKfp, orchestrator: KfpClientOrchestrator, package: Path
) -> None:
    ref = await orchestrator.publish("wine_quality", "0123abcd", package)
    good = await orchestrator.submit("mlcd-good", ref, {})
    bad = await orchestrator.submit("mlcd-bad", ref, {})

    fake.finish(good.run_id, "SUCCEEDED")
    fake.finish(bad.run_id, "FAILED", failed_task="train-model", error="ValueError: not enough rows")

    succeeded = await orchestrator.get_run(good.run_id)
    failed = await orchestrator.get_run(bad.run_id)
    assert succeeded.finished and succeeded.state == "SUCCEEDED"
    assert succeeded.outputs == {}  # v2beta1 reports no parameter outputs: the version is found in MLflow
    assert failed.state == "FAILED" and failed.failed_task == "train-model"
    assert "not enough rows" in failed.log_tail


async def test_a_server_that_never_answers_is_reported_unavailable_in_time(
    fake: kfp_api.FakeKfp, package: Path
) -> None:
    orchestrator = KfpClientOrchestrator(fake.url, timeout_s=1)
    await orchestrator.ping()
    fake.hang = True

    started = time.monotonic()
    with pytest.raises(AdapterUnavailable, match="KFP at"):
        await orchestrator.find_run("mlcd-anything")
    assert time.monotonic() - started < 8


async def test_a_closed_port_is_reported_unavailable() -> None:
    orchestrator = KfpClientOrchestrator(f"http://127.0.0.1:{processes.free_port()}", timeout_s=2)

    with pytest.raises(AdapterUnavailable):
        await orchestrator.ping()
