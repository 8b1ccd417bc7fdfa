"""Multi-user Kubeflow: a service-account token on every call (reread as the kubelet rotates it), runs listed
in the profile namespace and filed under one experiment there; and a run past its time is terminated, on
KFP and on the embedded local runner."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mlcd.adapters import kfp, kfp_compiler
from mlcd.adapters.kfp import KfpClientOrchestrator, LocalOrchestrator
from mlcd.config import Settings
from mlcd.errors import PermanentError
from tests.fakes import kfp_api
from tests.support import flows

NAMESPACE = "team-a"


@pytest.fixture
def fake() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        server.multi_user = True
        server.token = "sa-token-1"
        yield server


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "package.yaml"
    path.write_text("pipelineInfo:\n  name: wine-quality\n")
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("sa-token-1")
    return path


def from_settings(
    fake: kfp_api.FakeKfp, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> KfpClientOrchestrator:
    """Built as `mlcd serve` builds it; the token path from KFP's own variable, as Kubeflow documents it."""
    for name in [n for n in os.environ if n.startswith("MLCD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLCD_KFP_HOST", fake.url)
    monkeypatch.setenv("MLCD_KFP_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("MLCD_KFP_EXPERIMENT", "mlcd")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    orchestrator = kfp.build(Settings.load())
    assert isinstance(orchestrator, KfpClientOrchestrator)
    return orchestrator


async def test_runs_go_to_the_namespace_experiment_with_the_service_account_token(
    fake: kfp_api.FakeKfp, package: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orchestrator = from_settings(fake, token_file, monkeypatch)
    await orchestrator.ping()
    ref = await orchestrator.publish("wine_quality", "0123abcd", package)

    first = await orchestrator.submit("mlcd-wine-1", ref, {"data_uri": "s3://landing/a.csv"})
    await asyncio.to_thread(token_file.write_text, "sa-token-2")  # the kubelet rotated the projected token
    fake.token = "sa-token-2"
    second = await orchestrator.submit("mlcd-wine-2", ref, {"data_uri": "s3://landing/b.csv"})
    found = await orchestrator.find_run("mlcd-wine-2")

    (experiment,) = fake.experiments.values()
    assert (experiment["display_name"], experiment["namespace"]) == ("mlcd", NAMESPACE)
    assert {fake.runs[r.run_id]["experiment_id"] for r in (first, second)} == {experiment["experiment_id"]}
    assert found is not None and found.run_id == second.run_id
    listing = [c for c in fake.calls if c.method == "GET" and c.path == f"{kfp_api.PREFIX}/runs"]
    assert listing and all(c.query.get("namespace") == NAMESPACE for c in listing)
    assert {c.authorization for c in fake.calls} == {"Bearer sa-token-1", "Bearer sa-token-2"}


async def test_without_the_token_kfp_refuses_and_mlcd_says_so(fake: kfp_api.FakeKfp, tmp_path: Path) -> None:
    orchestrator = KfpClientOrchestrator(fake.url, timeout_s=5, namespace=NAMESPACE)

    with pytest.raises(PermanentError, match="HTTP 401"):
        await orchestrator.find_run("mlcd-wine-1")


async def test_terminating_a_run_cancels_it_on_kfp_and_leaves_a_finished_one_alone(
    fake: kfp_api.FakeKfp, package: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orchestrator = from_settings(fake, token_file, monkeypatch)
    ref = await orchestrator.publish("wine_quality", "0123abcd", package)
    stuck = await orchestrator.submit("mlcd-stuck", ref, {})
    done = await orchestrator.submit("mlcd-done", ref, {})
    fake.finish(done.run_id, "SUCCEEDED")

    await orchestrator.terminate_run(stuck.run_id)
    await orchestrator.terminate_run(done.run_id)

    assert (await orchestrator.get_run(stuck.run_id)).state == "CANCELED"
    assert (await orchestrator.get_run(done.run_id)).state == "SUCCEEDED"
    terminated = [c.path for c in fake.calls if c.path.endswith(":terminate")]
    assert terminated == [f"{kfp_api.PREFIX}/runs/{stuck.run_id}:terminate"]


SLEEPY = """
from kfp import dsl


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def wait_long(seconds: int) -> int:
    import time

    time.sleep(seconds)
    return seconds


@dsl.pipeline(name="sleepy")
def pipeline(seconds: int = 300) -> int:
    return wait_long(seconds=seconds).output
"""


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalOrchestrator]:
    orchestrator = LocalOrchestrator(tmp_path / "home", tmp_path / "pipelines")
    yield orchestrator
    await orchestrator.close()


async def test_terminating_a_local_run_stops_its_worker_and_task(
    local: LocalOrchestrator, tmp_path: Path
) -> None:
    folder = tmp_path / "pipelines" / "sleepy"
    folder.mkdir(parents=True)
    (folder / "pipeline.py").write_text(textwrap.dedent(SLEEPY))
    package = tmp_path / "sleepy.yaml"
    await kfp_compiler.compile_in_child(folder, package, 120)
    ref = await local.publish("sleepy", "v1", package)
    run = await local.submit("mlcd-sleepy-1", ref, {"seconds": 300})

    async def running_pid() -> int | None:
        state = kfp.worker.read_state(local.runs / "mlcd-sleepy-1.json")
        return int(state["pid"]) if state["state"] == "RUNNING" and state.get("pid") else None

    pid = await flows.eventually(running_pid, "the local run to start", 60)
    await local.terminate_run(run.run_id)

    ended = await local.get_run(run.run_id)
    assert ended.state == "CANCELED" and "terminated" in ended.log_tail
    assert not kfp._pid_alive(pid)
