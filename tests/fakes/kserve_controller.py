"""A stand-in for KServe's controller and data plane, over the Kubernetes API emulator.

It watches InferenceServices and does what KServe would, with the real parts where they run here:
each revision's `storageUri` is downloaded with KServe's own storage initializer (`kserve-storage`)
and served by a real MLServer (its MLflow runtime) from `.venv-mlserver`; the status it writes is
KServe's shape (conditions with observedGeneration, latestCreated/Ready/Rolledout/previousRolledout
revisions, `components.predictor.traffic`; in Standard mode `canaryStatuses` and CanaryReady). A load
generator's requests are split by the traffic it set and sent to the revisions' MLServers; their real
answers feed Knative queue-proxy metrics (`revision_app_request_count`, `revision_app_request_latencies`
in ms), which a real Prometheus scrapes together with every MLServer's own /metrics.

Serverless mode follows KServe's canary rollout: with `canaryTrafficPercent` the latest ready revision
gets that share and the last rolled-out revision the rest; without it the latest ready revision gets
everything and, once it is the latest created one, becomes the rolled-out revision. Standard
(RawDeployment) mode keeps one deployment for the main predictor (replaced by a rolling update) and one
per named `spec.canary` entry, which gets its `trafficPercent` once Ready.

Knobs: `ready_delay_s` and `slow(uri, s)` (a revision reports Ready that long after its MLServer is),
`fail_to_load(uri)`
(the model files arrive corrupted, so MLServer cannot load them: the revision fails), `traffic` (the
load generator on or off). A model that errors on every request is a real model version
(tests/support/kserve_models.BROKEN). `splits` records every traffic split applied, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tests.fakes.kube_api import KubeApi
from tests.support import kserve_models, mlserver
from tests.support import prometheus as prometheus_support
from tests.support.mlflow_s3 import S3Store

PREDICTOR = (
    "predictor"  # Standard mode: the main predictor's deployment (mlcd.adapters.kserve.PREDICTOR_REVISION)
)
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass
class Revision:
    """One Knative revision (Serverless) or Deployment (Standard): a real MLServer once it is up."""

    name: str
    label: str  # what Prometheus' `revision` label says for its MLServer
    uri: str
    template: dict[str, Any]
    folder: Path
    server: mlserver.ModelServer | None = None
    ready: bool = False
    failed: str = ""
    task: asyncio.Task[None] | None = None


@dataclass
class Service:
    """What the controller keeps per InferenceService."""

    namespace: str
    name: str
    standard: bool = False
    revisions: list[Revision] = field(default_factory=list)  # Serverless, oldest first
    rolled_out: Revision | None = None
    previous_rolled_out: Revision | None = None
    mains: list[Revision] = field(default_factory=list)  # Standard: the main predictor, oldest first
    canaries: dict[str, Revision] = field(default_factory=dict)
    retired: list[Revision] = field(default_factory=list)  # Standard: canaries gone from the spec
    routes: list[tuple[Revision, int]] = field(default_factory=list)


@dataclass
class Request:
    """One request of the load generator, as its client saw it."""

    revision: str
    status: int
    latency_ms: float


class KServeController:
    def __init__(
        self,
        api: KubeApi,
        store: S3Store,
        folder: Path,
        *,
        ready_delay_s: float = 0.0,
        discovered: Path | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.folder = folder
        self.ready_delay_s = ready_delay_s
        self.discovered = discovered
        self.traffic = True
        self.splits: list[tuple[str, dict[str, int]]] = []
        self.requests: list[Request] = []
        self.services: dict[tuple[str, str], Service] = {}
        self._failing: set[str] = set()
        self._delays: dict[str, float] = {}
        self._numbers = itertools.count(1)
        self._downloads: dict[str, Path] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changes: asyncio.Queue[tuple[str, str]] | None = None
        self.registry = prometheus_client.CollectorRegistry()
        self._queue_proxy = QueueProxyMetrics()
        self.registry.register(self._queue_proxy)
        self._metrics_server: Any = None
        self.metrics_port = 0

    # --- knobs ------------------------------------------------------------------------------------

    def slow(self, uri: str, ready_delay_s: float) -> None:
        """Revisions of this URI report Ready `ready_delay_s` after their MLServer is: a slow start."""
        self._delays[uri] = ready_delay_s

    def fail_to_load(self, uri: str) -> None:
        """Revisions of this storage URI get corrupted files: MLServer cannot load the model."""
        self._failing.add(uri)

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> KServeController:
        mlserver.require()
        self.folder.mkdir(parents=True, exist_ok=True)
        server, _ = prometheus_client.start_http_server(0, "127.0.0.1", registry=self.registry)
        self._metrics_server = server
        self.metrics_port = int(server.server_port)
        self._changes = self.api.watch()
        self._tasks.append(asyncio.create_task(self._watch(), name="kserve-controller"))
        for key in self.api.objects:
            self._changes.put_nowait(key)
        self._publish_targets()
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()
        for service in self.services.values():
            for revision in _all(service):
                if revision.task is not None:
                    revision.task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for service in self.services.values():
            for revision in _all(service):
                if revision.task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await revision.task
                self._stop(revision)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

    async def _watch(self) -> None:
        assert self._changes is not None
        while True:
            key = await self._changes.get()
            if key in self.api.objects:
                self._reconcile(key)

    # --- reconciling ------------------------------------------------------------------------------

    def _reconcile(self, key: tuple[str, str]) -> None:
        obj = self.api.objects[key]
        service = self.services.setdefault(key, Service(*key, standard=_standard(obj)))
        if service.standard:
            status, routes = self._reconcile_standard(service, obj)
        else:
            status, routes = self._reconcile_serverless(service, obj)
        status["observedGeneration"] = obj["metadata"].get("generation", 1)
        status["url"] = f"http://{service.name}.{service.namespace}.example.com"
        self.api.write_status(*key, status)
        split = {revision.name: percent for revision, percent in routes if percent}
        if [(r.name, p) for r, p in routes] != [(r.name, p) for r, p in service.routes]:
            service.routes = routes
            self.splits.append((service.name, split))
        self._collect(service)

    def _reconcile_serverless(
        self, service: Service, obj: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[Revision, int]]]:
        predictor = obj["spec"]["predictor"]
        template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        if not service.revisions or service.revisions[-1].template != template:
            name = f"{service.name}-predictor-{len(service.revisions) + 1:05d}"
            service.revisions.append(self._revision(service, name, name, template))
        created = service.revisions[-1]
        ready = next((r for r in reversed(service.revisions) if r.ready), None)
        percent = predictor.get("canaryTrafficPercent")
        if percent is None and created.ready and service.rolled_out is not created:
            service.previous_rolled_out, service.rolled_out = service.rolled_out, created
        rolled = service.rolled_out
        routes: list[tuple[Revision, int]] = []
        traffic: list[dict[str, Any]] = []
        if ready is not None:
            if percent is None or rolled is None or rolled is ready:
                routes = [(ready, 100)]
                traffic = [{"revisionName": ready.name, "percent": 100, "latestRevision": True}]
            else:
                routes = [(ready, int(percent)), (rolled, 100 - int(percent))]
                traffic = [
                    {
                        "revisionName": ready.name,
                        "percent": int(percent),
                        "latestRevision": True,
                        "tag": "latest",
                    },
                    {
                        "revisionName": rolled.name,
                        "percent": 100 - int(percent),
                        "latestRevision": False,
                        "tag": "prev",
                    },
                ]
        components: dict[str, Any] = {
            "latestCreatedRevision": created.name,
            "traffic": traffic,
        }
        if ready is not None:
            components["latestReadyRevision"] = ready.name
        if rolled is not None:
            components["latestRolledoutRevision"] = rolled.name
        if service.previous_rolled_out is not None:
            components["previousRolledoutRevision"] = service.previous_rolled_out.name
        condition = _condition("Ready", created)
        status = {
            "conditions": [condition, {**_condition("PredictorReady", created)}],
            "components": {"predictor": components},
            "deploymentMode": "Serverless",
        }
        return status, routes

    def _reconcile_standard(
        self, service: Service, obj: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[Revision, int]]]:
        predictor = obj["spec"]["predictor"]
        if not service.mains or service.mains[-1].template != predictor:
            name = f"{service.name}-predictor-{next(self._numbers):05d}"
            service.mains.append(self._revision(service, name, PREDICTOR, predictor))
        main_created = service.mains[-1]
        main = next((r for r in reversed(service.mains) if r.ready), None)  # a rolling update
        wanted: dict[str, tuple[dict[str, Any], int]] = {}
        for entry in obj["spec"].get("canary") or []:
            wanted[entry["predictor"]["name"]] = (entry["predictor"], int(entry["trafficPercent"]))
        for name in list(service.canaries):
            if name not in wanted or service.canaries[name].template != wanted[name][0]:
                service.retired.append(service.canaries.pop(name))  # stopped once out of the routes
        canary_statuses: list[dict[str, Any]] = []
        routes: list[tuple[Revision, int]] = []
        for name, (template, percent) in wanted.items():
            if name not in service.canaries:
                service.canaries[name] = self._revision(service, f"{service.name}-{name}", name, template)
            canary = service.canaries[name]
            serving = percent if canary.ready else 0
            canary_statuses.append({"name": name, "ready": canary.ready, "trafficPercent": serving})
            if serving:
                routes.append((canary, serving))
        if main is not None:
            routes.insert(0, (main, 100 - sum(p for _, p in routes)))
        conditions = [_condition("Ready", main_created), _condition("PredictorReady", main_created)]
        if wanted:
            canaries = [service.canaries[name] for name in wanted]
            failed = next((c for c in canaries if c.failed), None)
            starting = next((c for c in canaries if not c.ready), None)
            conditions.append(_condition("CanaryReady", failed or starting or canaries[0]))
        status: dict[str, Any] = {
            "conditions": conditions,
            "components": {"predictor": {"latestCreatedRevision": main_created.name}},
            "deploymentMode": "RawDeployment",
        }
        if main is not None:
            status["components"]["predictor"]["latestReadyRevision"] = main.name
        if canary_statuses:
            status["canaryStatuses"] = canary_statuses
        return status, routes

    # --- revisions: kserve-storage download, then a real MLServer ---------------------------------

    def _revision(self, service: Service, name: str, label: str, template: dict[str, Any]) -> Revision:
        uri = str((template.get("model") or {}).get("storageUri", ""))
        revision = Revision(name, label, uri, template, self.folder / f"{service.namespace}-{name}")
        revision.task = asyncio.create_task(self._bring_up(service, revision), name=f"revision {name}")
        return revision

    async def _bring_up(self, service: Service, revision: Revision) -> None:
        try:
            model_dir = await asyncio.to_thread(self._download, revision.uri)
            if revision.uri in self._failing:
                model_dir = revision.folder / "corrupted"
                model_dir.mkdir(parents=True, exist_ok=True)
                (model_dir / "MLmodel").write_text("flavors: {python_function: {loader_module: nowhere}}\n")
            revision.server = await asyncio.to_thread(
                mlserver.start, model_dir, service.name, revision.folder / "mlserver"
            )
            self._publish_targets()
            while not await asyncio.to_thread(revision.server.ready):
                if not revision.server.alive():
                    raise RuntimeError(f"MLServer exited: {_tail(revision.server)}")
                if await asyncio.to_thread(_load_failed, revision.server):
                    raise RuntimeError(f"MLServer could not load the model: {_tail(revision.server)}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(self._delays.get(revision.uri, self.ready_delay_s))
            revision.ready = True
        except mlserver.DownloadFailed as e:
            revision.failed = f"storage-initializer: {e}"
        except RuntimeError as e:
            revision.failed = str(e)[-500:]
        assert self._changes is not None
        self._changes.put_nowait((service.namespace, service.name))

    def _download(self, uri: str) -> Path:
        # A node-level cache: kserve-storage downloads each URI once per test.
        if uri not in self._downloads:
            target = self.folder / "downloads" / f"{len(self._downloads) + 1}"
            self._downloads[uri] = mlserver.download(uri, target, self.store)
        return self._downloads[uri]

    def _collect(self, service: Service) -> None:
        """Stop revisions that serve nothing and are no longer referenced (Knative scales them to zero)."""
        keep = {id(r) for r, _ in service.routes}
        keep |= {id(r) for r in (service.rolled_out, service.previous_rolled_out) if r is not None}
        if service.revisions:
            keep.add(id(service.revisions[-1]))
        if service.mains:
            keep.add(id(service.mains[-1]))
        keep |= {id(r) for r in service.canaries.values()}
        for revision in [*service.revisions, *service.mains]:
            if id(revision) not in keep and revision.ready:
                self._stop(revision)
        for revision in list(service.retired):
            if id(revision) not in keep:
                if revision.task is not None:
                    revision.task.cancel()
                self._stop(revision)
                service.retired.remove(revision)
        self._publish_targets()

    def _stop(self, revision: Revision) -> None:
        if revision.server is not None:
            revision.server.stop()
            revision.server = None
        revision.ready = False

    def _publish_targets(self) -> None:
        if self.discovered is None:
            return
        groups: list[dict[str, object]] = [
            {"targets": [self.metrics_target], "labels": {"component": "queue-proxy"}}
        ]
        for service in self.services.values():
            for revision in _all(service):
                if revision.server is not None:
                    groups.append(
                        {
                            "targets": [revision.server.metrics_target],
                            "labels": {
                                "namespace": service.namespace,
                                "inferenceservice": service.name,
                                "revision": revision.label,
                            },
                        }
                    )
        prometheus_support.set_discovered(self.discovered, groups)

    # --- the load generator -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def load(
        self, namespace: str, name: str, rows: list[list[float]] | None = None, rate_per_s: float = 20
    ) -> AsyncIterator[None]:
        """Send requests to the InferenceService, split by the traffic this controller set."""
        task = asyncio.create_task(self._generate(namespace, name, rows or kserve_models.ROWS, rate_per_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _generate(self, namespace: str, name: str, rows: list[list[float]], rate_per_s: float) -> None:
        # Requests go out at the rate asked, however slow the answers: up to 32 in flight.
        body = kserve_models.infer_body(rows)
        credit: dict[str, float] = {}
        in_flight: set[asyncio.Task[None]] = set()
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                while True:
                    await asyncio.sleep(1 / rate_per_s)
                    service = self.services.get((namespace, name))
                    if not self.traffic or service is None or not service.routes:
                        continue
                    revision = _pick(service.routes, credit)
                    if revision.server is None or limit.locked():
                        continue
                    await limit.acquire()
                    task = asyncio.create_task(self._send(client, service, revision, body))
                    in_flight.add(task)
                    task.add_done_callback(lambda done: (in_flight.discard(done), limit.release()))
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _send(self, client: httpx.AsyncClient, service: Service, revision: Revision, body: Any) -> None:
        assert revision.server is not None
        started = time.perf_counter()
        try:
            answer = await client.post(f"{revision.server.url}/v2/models/{service.name}/infer", json=body)
            code = answer.status_code
        except httpx.HTTPError:
            code = 502  # the queue-proxy's answer when the user container does not
        latency_ms = (time.perf_counter() - started) * 1000
        self.requests.append(Request(revision.name, code, latency_ms))
        if service.standard:
            return  # no Knative, no queue-proxy: Standard mode's analysis reads MLServer's metrics
        self._queue_proxy.observe(
            {
                "namespace_name": service.namespace,
                "configuration_name": f"{service.name}-predictor",
                "revision_name": revision.name,
                "service_name": f"{service.name}-predictor",
                "response_code": str(code),
                "response_code_class": f"{code // 100}xx",
            },
            latency_ms,
        )


class QueueProxyMetrics(Collector):
    """Knative queue-proxy's request metrics, by their exported names.

    Knative exports `revision_app_request_count` as a counter without the `_total` suffix that
    prometheus_client's Counter would add, so the samples are written out here by name.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        self._buckets: dict[tuple[tuple[str, str], ...], list[int]] = {}
        self._sums: dict[tuple[tuple[str, str], ...], float] = {}

    def observe(self, labels: dict[str, str], latency_ms: float) -> None:
        key = tuple(sorted(labels.items()))
        self._counts[key] = self._counts.get(key, 0) + 1
        buckets = self._buckets.setdefault(key, [0] * (len(LATENCY_BUCKETS_MS) + 1))
        for index, bound in enumerate((*LATENCY_BUCKETS_MS, float("inf"))):
            if latency_ms <= bound:
                buckets[index] += 1
        self._sums[key] = self._sums.get(key, 0.0) + latency_ms

    def collect(self) -> Iterator[Metric]:
        count = Metric(
            "revision_app_request_count", "The number of requests routed to the revision", "counter"
        )
        latencies = Metric("revision_app_request_latencies", "Request latency in milliseconds", "histogram")
        for key, value in list(self._counts.items()):
            labels = dict(key)
            count.add_sample("revision_app_request_count", labels, value)
            for bound, cumulative in zip(
                (*LATENCY_BUCKETS_MS, float("inf")), self._buckets[key], strict=True
            ):
                le = "+Inf" if bound == float("inf") else str(float(bound))
                latencies.add_sample(
                    "revision_app_request_latencies_bucket", {**labels, "le": le}, cumulative
                )
            latencies.add_sample("revision_app_request_latencies_count", labels, value)
            latencies.add_sample("revision_app_request_latencies_sum", labels, self._sums[key])
        yield count
        yield latencies


def _standard(obj: dict[str, Any]) -> bool:
    notes = obj["metadata"].get("annotations") or {}
    return notes.get(DEPLOYMENT_MODE) in {"RawDeployment", "Standard"}


def _all(service: Service) -> list[Revision]:
    return [*service.revisions, *service.mains, *service.canaries.values(), *service.retired]


def _condition(kind: str, revision: Revision) -> dict[str, Any]:
    if revision.ready:
        return {"type": kind, "status": "True"}
    if revision.failed:
        return {"type": kind, "status": "False", "reason": "RevisionFailed", "message": revision.failed}
    return {
        "type": kind,
        "status": "Unknown",
        "reason": "RevisionNotReady",
        "message": f"{revision.name} is starting",
    }


def _pick(routes: list[tuple[Revision, int]], credit: dict[str, float]) -> Revision:
    """Smooth weighted round robin: over any 100 requests each revision gets its percentage."""
    for revision, percent in routes:
        credit[revision.name] = credit.get(revision.name, 0.0) + percent
    chosen = max(routes, key=lambda route: credit[route[0].name])[0]
    credit[chosen.name] -= sum(percent for _, percent in routes)
    return chosen


def _load_failed(server: mlserver.ModelServer) -> bool:
    log = Path(server.process.log_path)  # type: ignore[attr-defined]
    return log.exists() and "Couldn't load model" in log.read_text(errors="replace")


def _tail(server: mlserver.ModelServer) -> str:
    log = Path(server.process.log_path)  # type: ignore[attr-defined]
    lines = (
        [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if log.exists()
        else []
    )
    return " | ".join(lines[-3:])
