"""What the Helm chart renders boots: every Deployment and the migration Job, run as the pod would run it.

The chart is rendered by the real Helm engine, with its default values (only the addresses of the outside
systems set, as any install must) and with a production-like values file. For each workload the test
builds the pod: the image's ENV (parsed from the Dockerfile), then the container's envFrom sources and env
exactly as rendered, the ConfigMaps and Secrets written as files at its volume mounts, the image's files
(COPY lines) beside them, and runs the container's args after the image's ENTRYPOINT. The Job must exit 0;
every Deployment must answer /readyz 200. The outside systems are real where they can run here (Tansu,
PostgreSQL with a database of this test's own, the MinIO gateway, MLflow, Prometheus) and the fakes
elsewhere (GitLab, KFP, the Kubernetes API).

Three liberties, each because several pods share one machine here:
- absolute paths of the pod's filesystem (/var/lib/mlcd, /etc/mlcd/…, /app) live under a folder per pod,
  and settings naming them are rewritten to match;
- MLCD_HTTP_PORT gets a free port (each pod has a network namespace of its own, these processes do not);
- the Kubernetes API is reached through KUBECONFIG, standing in for the service-account token mount the
  kubernetes client reads from a fixed path in a pod.
Tansu has no idempotent producer: config.kafka.enableIdempotence is false in both value sets (a values
choice, not a rewrite).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml

from tests.conftest import unique
from tests.fakes import kfp_api, kube_api
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import image_layout, minio_gateway, processes, prometheus

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(600)]

CHART = image_layout.ROOT / "helm" / "mlcd"
RELEASE, NAMESPACE = "prod", "mlcd"
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 240
ONCALL_TOKEN = "mlcd-chart-boot-oncall-token"
KFP_TOKEN = "projected-service-account-token"  # what the kubelet writes into the projected volume

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Outside:
    """Addresses of this test's outside systems."""

    kafka: str
    database_url: str
    mlflow: str
    kfp: kfp_api.FakeKfp
    s3: minio_gateway.Gateway
    prometheus: str
    gitlab: FakeGitLab
    kube: str


def default_values(outside: Outside) -> dict[str, Any]:
    """The chart's defaults; only the addresses every install sets for its cluster."""
    return {
        "config": {
            "kafka": {"bootstrap": outside.kafka, "enableIdempotence": False},
            "mlflowTrackingUri": outside.mlflow,
            "kfpHost": outside.kfp.url,
            "s3": {"endpoint": outside.s3.endpoint},
            "prometheusUrl": outside.prometheus,
        },
        "secrets": {"databaseUrl": outside.database_url},
    }


def production_values(outside: Outside) -> dict[str, Any]:
    """Every outside system configured, secrets set, autoscaling and monitoring on."""
    token_sha256 = hashlib.sha256(ONCALL_TOKEN.encode()).hexdigest()
    return {
        "image": {"repository": "registry.example.com/ml/mlcd", "tag": "0.1.0"},
        "services": {"ingest": {"enabled": True, "replicaCount": 3, "resources": {}, "topics": []}},
        "config": {
            "kafka": {
                "bootstrap": outside.kafka,
                "enableIdempotence": False,
                "namespace": unique("prod") + ".",
                "partitions": 6,
                "replicationFactor": 1,
                "sessionTimeoutSeconds": 9,
                "heartbeatIntervalSeconds": 3,
            },
            "mlflowTrackingUri": outside.mlflow,
            "mlflowTimeoutSeconds": 20,
            "kfpHost": outside.kfp.url,
            "kfpTimeoutSeconds": 20,
            "kfpNamespace": "team-ml",
            "kfpExperiment": "mlcd",
            "kfpServiceAccountToken": True,
            # The form MLflow's MLFLOW_S3_ENDPOINT_URL and boto take.
            "s3": {"endpoint": f"http://{outside.s3.endpoint}", "timeoutSeconds": 20},
            "kserveNamespace": "serving",
            "prometheusUrl": outside.prometheus,
            "gitlabUrl": outside.gitlab.url,
            "minioKafkaTopic": "minio-events",
            "eventRetentionDays": 14,
            "logLevel": "INFO",
        },
        "secrets": {
            "databaseUrl": outside.database_url,
            "s3AccessKey": outside.s3.access_key,
            "s3SecretKey": outside.s3.secret_key,
            "gitlabToken": outside.gitlab.token,
            "gitlabWebhookSecret": "gitlab-hook-secret",
            "minioWebhookToken": "minio-hook-token",
            "alertmanagerToken": "alertmanager-token",
            "mlflowWebhookSecret": "mlflow-hook-secret",
        },
        "apiTokens": {"tokens": [{"name": "alice", "groups": ["oncall"], "token_sha256": token_sha256}]},
        "policies": {
            "files": {p.name: p.read_text() for p in (image_layout.ROOT / "policies").glob("*.yaml")}
        },
        "ingress": {"enabled": True, "className": "nginx"},
        "hpa": {"enabled": True},
        "keda": {"enabled": True},
        "serviceMonitor": {"enabled": True},
    }


VALUE_SETS = {"defaults": default_values, "production": production_values}


# --- from rendered manifests to the processes a pod would run -------------------------------------------


def render(values: dict[str, Any]) -> list[Manifest]:
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@dataclass
class Pod:
    name: str
    argv: list[str]
    env: dict[str, str]
    root: Path
    workdir: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "pod.log"


class Cluster:
    """The rendered objects a pod can reference: ConfigMaps and Secrets by name."""

    def __init__(self, manifests: list[Manifest]) -> None:
        self.config_maps = {
            m["metadata"]["name"]: m.get("data", {}) for m in manifests if m["kind"] == "ConfigMap"
        }
        self.secrets = {
            m["metadata"]["name"]: m.get("stringData", {}) for m in manifests if m["kind"] == "Secret"
        }

    def source(self, ref: Manifest) -> dict[str, str]:
        if "configMapRef" in ref:
            return dict(self.config_maps[ref["configMapRef"]["name"]])
        return dict(self.secrets[ref["secretRef"]["name"]])

    def value(self, entry: Manifest) -> str:
        if "value" in entry:
            return str(entry["value"])
        ref = entry["valueFrom"]
        if "configMapKeyRef" in ref:
            return str(self.config_maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]])
        return str(self.secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]])

    def files(self, volume: Manifest) -> dict[str, str]:
        if "projected" in volume:  # the kubelet's service-account token for an audience
            return {s["serviceAccountToken"]["path"]: KFP_TOKEN for s in volume["projected"]["sources"]}
        if "configMap" in volume:
            data, items = self.config_maps[volume["configMap"]["name"]], volume["configMap"].get("items")
        else:
            data, items = self.secrets[volume["secret"]["secretName"]], volume["secret"].get("items")
        if items:
            return {item["path"]: data[item["key"]] for item in items}
        return dict(data)


def pod_of(
    workload: Manifest, cluster: Cluster, image: image_layout.Image, root: Path, kubeconfig: Path
) -> Pod:
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    name = container["name"]
    root = root / name
    image_layout.lay_out(image, root)
    # Image ENV, then envFrom in order, then env: the order Kubernetes applies them.
    env: dict[str, str] = {k: v for k, v in image.env.items() if k != "PATH"}
    for ref in container.get("envFrom", []):
        env |= cluster.source(ref)
    for entry in container.get("env", []):
        env[entry["name"]] = cluster.value(entry)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    absolute = {m["mountPath"] for m in container.get("volumeMounts", [])} | {
        destination for _, destination in image.copies
    }
    absolute |= {image.workdir, env.get("HOME", ""), env.get("MLCD_HOME", "")} - {""}
    for mount in container.get("volumeMounts", []):
        target = root / mount["mountPath"].lstrip("/")
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            continue
        shutil.rmtree(target, ignore_errors=True)  # a mount hides what the image has there
        target.mkdir(parents=True)
        for relative, text in cluster.files(volume).items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_text(text)
    for key, value in env.items():
        if any(value == p or value.startswith(p.rstrip("/") + "/") for p in absolute if p.startswith("/")):
            env[key] = str(root / value.lstrip("/"))
    port = None
    if "MLCD_HTTP_PORT" in env:
        port = processes.free_port()
        assert env["MLCD_HTTP_PORT"] == str(container["ports"][0]["containerPort"])
        env["MLCD_HTTP_PORT"] = str(port)
    env["PATH"] = f"{BIN}:/usr/local/bin:/usr/bin:/bin"  # the image's PATH puts its venv first
    if os.environ.get(
        "PYTHONPATH"
    ):  # a source tree under test, standing in for the image's installed package
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if spec.get("automountServiceAccountToken", True):
        env["KUBECONFIG"] = str(kubeconfig)
    workdir = root / image.workdir.lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    entrypoint = [str(BIN / "mlcd")]  # the image's ENTRYPOINT ["mlcd"]
    return Pod(workload["metadata"]["name"], entrypoint + list(container["args"]), env, root, workdir, port)


def start(pod: Pod) -> None:
    with open(pod.log, "ab") as log:
        pod.process = subprocess.Popen(
            pod.argv,
            env=pod.env,
            cwd=pod.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pod.process.log_path = str(pod.log)  # type: ignore[attr-defined]


def stop(pod: Pod) -> None:
    if pod.process is not None:
        processes.stop(pod.process, timeout_s=30)


async def until_ready(pod: Pod, http: httpx.AsyncClient) -> float:
    """Seconds from start to the first /readyz 200; fails with the pod's log if it exits or never does."""
    assert pod.process is not None and pod.port is not None
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < READY_TIMEOUT_S:
        if pod.process.poll() is not None:
            pytest.fail(f"{pod.name} exited with {pod.process.returncode}:\n{pod.log.read_text()[-4000:]}")
        try:
            answer = await http.get(f"http://127.0.0.1:{pod.port}/readyz", timeout=5)
            if answer.status_code == 200:
                return time.monotonic() - started
            last = f"{answer.status_code} {answer.text[:500]}"
        except httpx.HTTPError as e:
            last = repr(e)
        await asyncio.sleep(0.2)
    pytest.fail(
        f"{pod.name} not ready in {READY_TIMEOUT_S}s (last /readyz: {last}):\n{pod.log.read_text()[-4000:]}"
    )


# --- the outside systems --------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "mlcd", "user": {"token": "fake-service-account-token"}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "mlcd", "namespace": namespace}}
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[minio_gateway.Gateway]:
    gateway = minio_gateway.start_gateway(tmp_path)
    gateway.client().make_bucket("landing")
    yield gateway
    gateway.stop()


@pytest.fixture
async def outside(
    tmp_path: Path, kafka_bootstrap: str, pg_url: str, mlflow_uri: str, gateway: minio_gateway.Gateway
) -> AsyncIterator[Outside]:
    async with AsyncExitStack() as stack:
        gitlab = stack.enter_context(FakeGitLab())
        gitlab.add_project("ml/wine-quality", files={"pipelines/wine_quality/pipeline.py": "x = 1\n"})
        kfp = stack.enter_context(kfp_api.serve())
        kube = await stack.enter_async_context(kube_api.running())
        analysis = stack.enter_context(prometheus.running([], tmp_path / "prometheus"))
        yield Outside(kafka_bootstrap, pg_url, mlflow_uri, kfp, gateway, analysis, gitlab, kube.url)


# --- the test -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
async def test_every_rendered_workload_boots_under_its_rendered_env(
    value_set: str, outside: Outside, tmp_path: Path
) -> None:
    values = VALUE_SETS[value_set](outside)
    if values["config"].get("kfpServiceAccountToken"):
        outside.kfp.token, outside.kfp.multi_user = KFP_TOKEN, True
    manifests = render(values)
    cluster = Cluster(manifests)
    image = image_layout.final_stage()
    namespace = values["config"].get("kserveNamespace") or NAMESPACE
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", outside.kube, namespace)
    pods_root = tmp_path / "pods"
    (job,) = [m for m in manifests if m["kind"] == "Job"]
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert len(deployments) >= 6

    migrate = pod_of(job, cluster, image, pods_root, kubeconfig)
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run, migrate.argv, env=migrate.env, cwd=migrate.workdir, capture_output=True, timeout=180
    )
    migrated_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    pods = [pod_of(d, cluster, image, pods_root, kubeconfig) for d in deployments]
    try:
        for pod in pods:
            start(pod)
        async with httpx.AsyncClient() as http:
            times = await asyncio.gather(*(until_ready(pod, http) for pod in pods))
            # /status asks every adapter, KFP included, whether it answers.
            statuses = [
                (await http.get(f"http://127.0.0.1:{pod.port}/status", timeout=30)).json() for pod in pods
            ]
    finally:
        # All at once, as a namespace deletion would: each drain takes seconds.
        await asyncio.gather(*(asyncio.to_thread(stop, pod) for pod in pods))
    assert all(status["adapters"] for status in statuses)
    if outside.kfp.token is not None:  # multi-user: every KFP call carried the mounted token
        assert outside.kfp.calls and {c.authorization for c in outside.kfp.calls} == {f"Bearer {KFP_TOKEN}"}
        assert [s["adapters"].get("orchestrator") for s in statuses] == [None] * len(pods)
        assert all(problem is None for s in statuses for problem in s["adapters"].values()), statuses
    report = ", ".join(
        f"{pod.name.removeprefix('prod-mlcd-')} {s:.1f} s" for pod, s in zip(pods, times, strict=True)
    )
    print(f"\n[{value_set}] start to ready: migrate (exit 0) {migrated_s:.1f} s, {report}", flush=True)
