"""A hung outside system (KFP, MLflow, GitLab) under a service in its own process on the real broker: the
handler's call times out, is retried a bounded number of times, and the event is parked on `mlcd.dlq` with
headers naming the timeout, the attempts and the original topic, while the consumer goes on with the event
queued behind it.

Every test publishes its first event, waits until the service is inside the hung call, then publishes the
next one, so that one is certainly behind the stuck event. Adapter timeouts are one second and a handler
gets two attempts, set through MLCD_* variables as an operator would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlcd import events
from mlcd.adapters.kfp import KfpClientOrchestrator
from mlcd.bus.kafka import KafkaBus
from tests.conftest import REPO, unique
from tests.fakes import kfp_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import flows, processes
from tests.support.mlcd_service import ServiceProcess
from tests.support.silent_server import SilentServer
from tests.support.topic_tail import Seen, TopicTail

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "wine_quality"
PROJECT = "ml/wine-quality"
ATTEMPTS = 2

Envelope = events.Envelope[Any]
RunService = Callable[[str, dict[str, str]], ServiceProcess]


@pytest.fixture
def namespace() -> str:
    return unique("slow") + "."


@pytest.fixture
def service_env(kafka_bootstrap: str, pg_url: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    return {
        "MLCD_HOME": str(tmp_path / "home"),
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        "MLCD_DATABASE_URL": pg_url,
        "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MLCD_KAFKA_NAMESPACE": namespace,
        "MLCD_HANDLER_MAX_ATTEMPTS": str(ATTEMPTS),
        "MLCD_HANDLER_BACKOFF_INITIAL_S": "0.2",
        "MLCD_HANDLER_BACKOFF_MAX_S": "0.5",
        "MLCD_KFP_TIMEOUT_S": "1",
        "MLCD_MLFLOW_TIMEOUT_S": "1",
        "MLCD_GITLAB_TIMEOUT_S": "1",
        # The process's adapter health check (/status) pings each system once at start, then only after
        # this long: its pings must not count among the handler's calls the test counts.
        "MLCD_ADAPTER_CHECK_INTERVAL_S": "3600",
    }


@pytest.fixture
async def bus(kafka_bootstrap: str, namespace: str) -> AsyncIterator[KafkaBus]:
    """The test's producer; starting it creates the namespace's topics."""
    kafka = KafkaBus(kafka_bootstrap, events.TOPICS, namespace=namespace)
    await kafka.start()
    yield kafka
    await kafka.stop()


@pytest.fixture
async def tail(bus: KafkaBus, kafka_bootstrap: str, namespace: str) -> AsyncIterator[TopicTail]:
    reader = await TopicTail(kafka_bootstrap, [namespace + t for t in events.TOPICS]).start()
    yield reader
    await reader.stop()


@pytest.fixture
def run_service(tmp_path: Path) -> Iterator[RunService]:
    """Start `mlcd serve NAME` with an environment; every service started is stopped afterwards."""
    started: list[ServiceProcess] = []

    def run(name: str, env: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(name, env, tmp_path)
        started.append(service)
        service.start()
        # The adapter health check's first round (it ends with serving) must not land among the calls
        # the test counts while a server hangs.
        processes.wait_until(
            lambda: 'mlcd_adapter_up{adapter="serving"}' in service.metrics(), 60, "the first adapter check"
        )
        return service

    yield run
    for service in started:
        service.stop()


async def _when(condition: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return condition()

    await flows.eventually(holds, what, 60)


async def _parked(tail: TopicTail, event: Envelope) -> Seen:
    async def on_the_dlq() -> Seen | None:
        return next((r for r in tail.on_topic(events.DLQ_TOPIC) if r.event_id == event.id), None)

    dead = await flows.eventually(on_the_dlq, f"{event.type} parked on the DLQ", 60)
    assert dead is not None
    return dead


async def _emitted(tail: TopicTail, payload_type: type[events.Payload], **data: str) -> Seen:
    """The first event of this type whose payload holds `data`."""

    async def found() -> Seen | None:
        return next((r for r in tail.of_type(payload_type.type) if data.items() <= r.data().items()), None)

    seen = await flows.eventually(found, f"{payload_type.type} with {data}", 60)
    assert seen is not None
    return seen


async def _parked_while_hung(
    server: Any, bus: KafkaBus, tail: TopicTail, stuck: Envelope, behind: Envelope, who: str
) -> Seen:
    """Hang `server` (a fake with `hang` and `calls`), publish `stuck`, then `behind` once the service is
    inside a call; `stuck`'s dead letter. One request per attempt (plus perhaps the next event's first):
    no hidden retries that keep a worker thread calling the hung server long after the handler gave up."""
    server.hang = True
    calls = len(server.calls)
    await flows.publish(bus, stuck)
    await _when(lambda: len(server.calls) > calls, f"{who} inside a call to the hung server")
    await flows.publish(bus, behind)
    dead = await _parked(tail, stuck)
    server.hang = False
    assert len(server.calls) - calls <= ATTEMPTS + 1, server.calls[calls:]
    return dead


def _assert_dead_letter(dead: Seen, event: Envelope, system: str) -> None:
    error = dead.headers["mlcd_error"].decode()
    assert re.search(r"time(d)? ?out", error, re.IGNORECASE), f"the error names the timeout: {error}"
    assert system in error, f"the error names {system}: {error}"
    assert dead.headers["mlcd_attempts"] == str(ATTEMPTS).encode()
    assert dead.headers["mlcd_original_topic"] == event.data.topic().encode()
    assert dead.event_type == event.type


async def test_hung_kfp_parks_the_trigger_and_the_next_trigger_starts_its_run(
    service_env: dict[str, str], bus: KafkaBus, tail: TopicTail, run_service: RunService, tmp_path: Path
) -> None:
    with kfp_api.serve() as kfp:
        package = tmp_path / "package.yaml"
        package.write_text("pipelineInfo:\n  name: wine-quality\n")
        await KfpClientOrchestrator(kfp.url, timeout_s=5).publish(MODEL, "0123abcd", package)
        run_service("trainer", {**service_env, "MLCD_KFP_HOST": kfp.url})
        stuck, behind = _validated("batch-1.csv"), _validated("batch-2.csv")

        dead = await _parked_while_hung(kfp, bus, tail, stuck, behind, "the trainer")

        await _emitted(tail, events.TrainingStarted, trigger_event_id=behind.id)
        assert len(kfp.created_runs()) == 1, "one run, for the event behind the parked one"
    _assert_dead_letter(dead, stuck, "KFP")
    assert not [
        r for r in tail.of_type(events.TrainingStarted.type) if r.data()["trigger_event_id"] == stuck.id
    ]


async def test_hung_mlflow_parks_the_candidate_while_the_gatekeeper_goes_on_with_the_next_event(
    service_env: dict[str, str], bus: KafkaBus, tail: TopicTail, run_service: RunService
) -> None:
    with SilentServer() as mlflow:
        run_service("gatekeeper", {**service_env, "MLCD_MLFLOW_TRACKING_URI": mlflow.url})
        trained = events.TrainingSucceeded(
            model=MODEL, run_id="run-1", model_version="3", metrics={"accuracy": 0.9}, data_uri="s3://x/y"
        )
        stuck = events.new_event(trained, source="test/slow-adapters")
        alert = events.AlertFired(
            model=MODEL,
            alert="FeatureDrift",
            severity="warning",
            fingerprint="f1",
            starts_at=datetime.now(UTC),
        )
        behind = events.new_event(alert, source="test/slow-adapters")

        checked = mlflow.connections  # the adapter health check's ping, before the handler's calls
        await flows.publish(bus, stuck)
        await _when(lambda: mlflow.connections > checked, "the gatekeeper inside a call to the hung MLflow")
        await flows.publish(bus, behind)
        dead = await _parked(tail, stuck)
        # MLflow still hangs: the next event does not need it and is handled all the same.
        retrain = await _emitted(tail, events.RetrainRequested, model=MODEL)
    _assert_dead_letter(dead, stuck, "MLflow")
    assert dead.arrived_at <= retrain.arrived_at


async def test_hung_gitlab_parks_the_push_and_the_next_push_is_built(
    service_env: dict[str, str], bus: KafkaBus, tail: TopicTail, run_service: RunService
) -> None:
    with FakeGitLab() as gitlab:
        gitlab.add_project(PROJECT)  # no files: the next push's build fails fast, "no pipeline"
        env = {**service_env, "MLCD_GITLAB_URL": gitlab.url, "MLCD_GITLAB_TOKEN": gitlab.token}
        run_service("builder", env)
        stuck, behind = _pushed("a" * 40), _pushed("b" * 40)

        dead = await _parked_while_hung(gitlab, bus, tail, stuck, behind, "the builder")

        await _emitted(tail, events.PipelineBuildFailed, commit="b" * 40)
        statuses = [s["status"] for s in gitlab.statuses(PROJECT, "b" * 40)]
        assert statuses == ["pending", "failed"], "the push behind the parked one was reported on"
    _assert_dead_letter(dead, stuck, "GitLab")


def _validated(key: str) -> Envelope:
    uri = f"s3://landing/{MODEL}/{key}"
    data = events.DataValidated(model=MODEL, uri=uri, rows=10, suite=MODEL, result_uri=uri + ".json")
    return events.new_event(data, source="test/slow-adapters")


def _pushed(sha: str) -> Envelope:
    push = events.CodePushed(
        project=PROJECT,
        project_id=15,
        ref="refs/heads/main",
        before="0" * 39 + "1",
        after=sha,
        author=events.GitUser(username="ada"),
        changed_paths=[f"pipelines/{MODEL}/pipeline.py"],
        default_branch="main",
    )
    return events.new_event(push, source="test/slow-adapters", subject=PROJECT)
