"""Readiness keeps webhooks flowing: the ingest pod, started exactly as the chart renders it, stays in its
Service while KFP hangs, MLflow is down or the broker is frozen, and answers deliveries 2xx meanwhile.

A pod leaves its Service after `failureThreshold` readiness probes in a row that fail or take longer
than `timeoutSeconds`; the test asks /readyz that many times in a row, with that timeout, during each
outage, and posts a GitLab delivery, which must be made durable (the broker, or else the outbox).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from tests.fakes import kfp_api, kube_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.integration import test_chart_boot as boot
from tests.support import image_layout, minio_gateway, prometheus
from tests.support.trap_proxy import TrapProxy

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture
async def outside(
    tmp_path: Path, own_broker: tuple[str, int], pg_url: str, mlflow_uri: str
) -> AsyncIterator[tuple[boot.Outside, TrapProxy, int]]:
    """The outside systems, with MLflow behind a proxy this test can take away and a broker of its own."""
    bootstrap, broker_pid = own_broker
    async with AsyncExitStack() as stack:
        gateway = minio_gateway.start_gateway(tmp_path)
        stack.callback(gateway.stop)
        gitlab = stack.enter_context(FakeGitLab())
        kfp = stack.enter_context(kfp_api.serve())
        kube = await stack.enter_async_context(kube_api.running())
        analysis = stack.enter_context(prometheus.running([], tmp_path / "prometheus"))
        mlflow = TrapProxy(mlflow_uri, "mlflow").start()
        stack.callback(mlflow.stop)
        world = boot.Outside(bootstrap, pg_url, mlflow.url, kfp, gateway, analysis, gitlab, kube.url)
        yield world, mlflow, broker_pid
        os.kill(broker_pid, signal.SIGCONT)


async def still_in_service(http: httpx.AsyncClient, pod: boot.Pod, probe: dict[str, int]) -> list[int]:
    """The status of `failureThreshold` readiness probes in a row, each given the probe's timeout."""
    answers = []
    for _ in range(probe["failureThreshold"]):
        try:
            answer = await http.get(f"http://127.0.0.1:{pod.port}/readyz", timeout=probe["timeoutSeconds"])
            answers.append(answer.status_code)
        except httpx.TimeoutException:
            answers.append(0)
    return answers


async def delivery(http: httpx.AsyncClient, pod: boot.Pod) -> int:
    headers = {
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": "gitlab-hook-secret",
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
    }
    body = {"object_kind": "push", "ref": "refs/heads/main", "project": {"path_with_namespace": "ml/wine"}}
    answer = await http.post(
        f"http://127.0.0.1:{pod.port}/hooks/gitlab", json=body, headers=headers, timeout=30
    )
    return answer.status_code


async def test_ingest_stays_ready_and_takes_webhooks_while_kfp_mlflow_or_the_broker_is_out(
    outside: tuple[boot.Outside, TrapProxy, int], tmp_path: Path
) -> None:
    world, mlflow, broker_pid = outside
    values = boot.production_values(world)
    values["config"] |= {"kfpNamespace": "", "kfpExperiment": "", "kfpServiceAccountToken": False}
    manifests = boot.render(values)
    cluster = boot.Cluster(manifests)
    image = image_layout.final_stage()
    kubeconfig = boot.write_kubeconfig(tmp_path / "kubeconfig", world.kube, "serving")
    (job,) = [m for m in manifests if m["kind"] == "Job"]
    (ingest,) = [
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("-ingest")
    ]
    probe = ingest["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    migrate = boot.pod_of(job, cluster, image, tmp_path / "pods", kubeconfig)
    boot.start(migrate)
    assert migrate.process is not None and migrate.process.wait(180) == 0
    pod = boot.pod_of(ingest, cluster, image, tmp_path / "pods", kubeconfig)
    boot.start(pod)
    try:
        async with httpx.AsyncClient() as http:
            await boot.until_ready(pod, http)
            seen = {"before": (await still_in_service(http, pod, probe), await delivery(http, pod))}

            world.kfp.hang = True  # accepts connections, never answers
            seen["kfp hangs"] = (await still_in_service(http, pod, probe), await delivery(http, pod))
            world.kfp.hang = False

            mlflow.stop()  # nothing listens on MLflow's address any more
            seen["mlflow down"] = (await still_in_service(http, pod, probe), await delivery(http, pod))

            os.kill(broker_pid, signal.SIGSTOP)  # a hung broker: the delivery goes to the outbox
            seen["broker frozen"] = (await still_in_service(http, pod, probe), await delivery(http, pod))
            os.kill(broker_pid, signal.SIGCONT)
    finally:
        boot.stop(pod)

    for outage, (probes, status) in seen.items():
        assert probes == [200] * probe["failureThreshold"], (outage, probes, pod.log.read_text()[-3000:])
        assert 200 <= status < 300, (outage, status)
