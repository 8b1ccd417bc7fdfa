"""One KServe world for a test: the Kubernetes API emulator, the KServe stand-in, a real Prometheus.

`world(...)` yields a `KServeWorld` whose InferenceService serves version 1 of a model registered in
an S3-backed MLflow (its files in the MinIO gateway), once the stand-in reports it Ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from mlcd.adapters import kserve
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.prometheus import PrometheusAnalysis
from mlcd.policy.book import PolicyBook
from mlcd.ports import ServingState
from tests.fakes import kube_api
from tests.fakes.kserve_controller import KServeController
from tests.support import prometheus
from tests.support.mlflow_s3 import S3Store

NAMESPACE = "models"


@dataclass
class KServeWorld:
    api: kube_api.KubeApi
    controller: KServeController
    serving: kserve.KServeServing
    registry: MlflowRegistry
    analysis: PrometheusAnalysis
    policies: PolicyBook
    prometheus_url: str
    model: str
    name: str
    mode: str

    def object(self) -> dict[str, Any]:
        return self.api.get(NAMESPACE, self.name)

    async def uri(self, version: str) -> str:
        return (await self.registry.get_version(self.model, version)).artifact_uri

    async def until(
        self, done: Callable[[ServingState], bool], what: str, timeout_s: float = 180
    ) -> ServingState:
        """Poll the adapter's view of the InferenceService until `done` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.serving.state(self.model)
            if done(state):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what}: still {state} after {timeout_s}s; splits {self.controller.splits}"
                )
            await asyncio.sleep(0.2)


def policy_text(model: str, name: str, mode: str, extra: str = "") -> str:
    return (
        f"model: {model}\nserving_name: {name}\n"
        f"rollout:\n  mode: {mode}\n  steps: [10, 50, 100]\n  interval: 4s\n"
        "  thresholds: {max_error_rate: 0.05, max_p95_latency_s: 2.0, min_requests: 2}\n"
        + (extra or "  progress_deadline: 90s\n")
    )


@asynccontextmanager
async def world(
    folder: Path,
    store: S3Store,
    mlflow_uri: str,
    model: str,
    mode: str,
    *,
    policy_extra: str = "",
    ready_delay_s: float = 0.0,
    serve_first: bool = True,
) -> AsyncIterator[KServeWorld]:
    """With `serve_first`, version 1 serves (Ready) before the test starts; else the InferenceService
    is as the chart creates it, its placeholder model not yet loadable."""
    name = f"{model.replace('_', '-')}-{mode}"
    policies_dir = folder / "policies"
    policies_dir.mkdir(parents=True, exist_ok=True)
    (policies_dir / f"{model}.yaml").write_text(policy_text(model, name, mode, policy_extra))
    policies = PolicyBook(policies_dir)
    registry = MlflowRegistry(mlflow_uri)
    discovered = folder / "discovered.json"
    async with kube_api.running(reconcile=False) as api:
        v1 = (await registry.get_version(model, "1")).artifact_uri
        initial = v1 if serve_first else f"s3://{store.bucket}/not-yet-trained"
        api.add(NAMESPACE, name, initial, "mlflow", "Serverless" if mode == "serverless" else "RawDeployment")
        controller = KServeController(
            api, store, folder / "kserve", ready_delay_s=ready_delay_s, discovered=discovered
        )
        async with controller:
            with prometheus.running([], folder / "prometheus", discovered=discovered) as prometheus_url:
                serving = kserve.KServeServing(
                    lambda: client.ApiClient(client.Configuration(host=api.url)),
                    NAMESPACE,
                    policies,
                    observe_timeout_s=180,
                )
                the_world = KServeWorld(
                    api,
                    controller,
                    serving,
                    registry,
                    PrometheusAnalysis(prometheus_url),
                    policies,
                    prometheus_url,
                    model,
                    name,
                    mode,
                )
                if serve_first:
                    await serving.promote(model, "1", v1)
                    await the_world.until(lambda s: s.ready and s.stable_version == "1", "version 1 Ready")
                yield the_world
