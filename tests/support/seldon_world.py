"""One Seldon Core 2 world for a test: the Kubernetes API emulator, the Seldon stand-in, a real Prometheus,
and the deployer over them with its timer ticking in real time.

The endpoint Model exists as its owner creates it, on a placeholder URI Seldon cannot load; the deployer
serves version 1 first. Model versions live in an S3-backed MLflow (files in the MinIO gateway): 1 and 2
good and agreeing, 3 errors on every request, 4 answers every request, the opposite class.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.adapters.prometheus import PrometheusAnalysis
from mlcd.adapters.seldon import SeldonAnalysis, SeldonServing
from mlcd.policy.book import PolicyBook
from mlcd.store import rollouts
from tests.fakes import seldon_controller
from tests.support import kserve_models, mlflow_s3, prometheus
from tests.support.deployer_driver import DeployerDriver

NAMESPACE = "models"
DISAGREEING = "4"


def register(tracking_uri: str, model: str, store: mlflow_s3.S3Store) -> None:
    """Versions 1 to 3 as for KServe, and version 4: good answers, every one the opposite class."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    kserve_models.register(tracking_uri, model, store)
    rng = np.random.default_rng(11)
    x = pd.DataFrame(rng.uniform(0.1, 8.0, size=(120, 4)), columns=kserve_models.FEATURES)
    flipped = (x["petal_length"] <= 3.0).astype(int).to_numpy()
    estimator = LogisticRegression(max_iter=200).fit(x, flipped)
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(f"kserve-{model}")
    assert experiment is not None
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow_s3.client_env(store), mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            registered_model_name=model,
            pip_requirements=["scikit-learn"],
            serialization_format="cloudpickle",
            signature=infer_signature(x, estimator.predict(x)),
        )
    assert str(info.registered_model_version) == DISAGREEING


def policy_text(model: str, endpoint: str, steps: str, analysis: str = "") -> str:
    probe = kserve_models.infer_body(kserve_models.ROWS)
    lines = [
        f"model: {model}",
        f"serving_name: {endpoint}",
        "rollout:",
        "  platform: seldon",
        f"  steps: {steps}",
        "  interval: 4s",
        "  progress_deadline: 90s",
        "  thresholds: {max_error_rate: 0.05, max_p95_latency_s: 2.0, min_requests: 2}",
        f"  probe: {json.dumps(probe)}",
    ]
    if analysis:
        lines.append(f"  analysis: {analysis}")
    return "\n".join(lines) + "\n"


@dataclass
class SeldonWorld:
    api: seldon_controller.SeldonApi
    controller: seldon_controller.SeldonController
    serving: SeldonServing
    registry: MlflowRegistry
    analysis: SeldonAnalysis
    policies: PolicyBook
    engine: AsyncEngine
    model: str
    endpoint: str

    @property
    def ports(self) -> dict[str, Any]:
        return {
            "policies": self.policies,
            "registry": self.registry,
            "serving": self.serving,
            "analysis": self.analysis,
        }

    async def uri(self, version: str) -> str:
        return (await self.registry.get_version(self.model, version)).artifact_uri

    @property
    def deployer(self) -> DeployerDriver:
        return DeployerDriver(self.engine, self.model, self.ports, lambda: self.controller.splits)

    async def serve_first_version(self) -> None:
        await self.deployer.approve(kserve_models.GOOD)
        done = await self.deployer.run_until({rollouts.SUCCEEDED, rollouts.ROLLED_BACK, rollouts.FAILED})
        assert done.state == rollouts.SUCCEEDED, f"{done.state}: {done.reason}"
        assert await self.deployer.champion() == kserve_models.GOOD


@asynccontextmanager
async def world(
    folder: Path,
    store: mlflow_s3.S3Store,
    mlflow_uri: str,
    model: str,
    engine: AsyncEngine,
    *,
    steps: str,
    analysis: str = "",
) -> AsyncIterator[SeldonWorld]:
    """Version 1 serves on the endpoint through the deployer before the test goes on."""
    endpoint = model.replace("_", "-")
    policies_dir = folder / "policies"
    policies_dir.mkdir(parents=True, exist_ok=True)
    (policies_dir / f"{model}.yaml").write_text(policy_text(model, endpoint, steps, analysis))
    policies = PolicyBook(policies_dir)
    assert policies.get(model) is not None, policies.errors
    discovered = folder / "discovered.json"
    async with seldon_controller.api_running() as api:
        api.add_model(NAMESPACE, endpoint, f"s3://{store.bucket}/not-yet-trained", requirements=["mlflow"])
        controller = seldon_controller.SeldonController(api, store, folder / "seldon", discovered=discovered)
        async with controller:
            with prometheus.running([], folder / "prometheus", discovered=discovered) as prometheus_url:
                serving = SeldonServing(
                    lambda: client.ApiClient(client.Configuration(host=api.url)),
                    NAMESPACE,
                    policies,
                    observe_timeout_s=120,
                )
                the_world = SeldonWorld(
                    api,
                    controller,
                    serving,
                    MlflowRegistry(mlflow_uri),
                    SeldonAnalysis(PrometheusAnalysis(prometheus_url), controller.mesh_url, policies),
                    policies,
                    engine,
                    model,
                    endpoint,
                )
                await the_world.serve_first_version()
                yield the_world
