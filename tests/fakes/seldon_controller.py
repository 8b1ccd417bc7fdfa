"""A stand-in for Seldon Core 2 over a Kubernetes API emulator: its operator, scheduler, agents and mesh.

`SeldonApi` stands in for kube-apiserver (on the object store of tests/fakes/kube_api.py), for
`mlops.seldon.io/v1alpha1` Models and Experiments: GET, LIST, POST, JSON merge-patch PATCH (409 on a stale
resourceVersion) and DELETE, every write validated against Seldon Core 2's CRD schemas (v2.6.0,
/work/shared/schemas/seldon/: 422 when invalid), the generation bumped on a spec change; status is a
subresource only the controller writes.

`SeldonController` does what Seldon would, with the real parts where they run here. Each Model
generation is a model version, loaded as `<name>_<n>` into its own real MLServer (from
`.venv-mlserver`), its files downloaded with kserve-storage (Seldon's agent uses rclone; both copy the
folder of an s3:// URI). Status follows the operator (operator/scheduler/model.go, experiment.go):
conditions only, Knative-style (lastTransitionTime moves only when a condition changes), no
observedGeneration; a Model is `ModelReady`/`Ready` once its newest version is available, and traffic
stays on the last available version until then. An Experiment is checked with the scheduler's own
rules (scheduler/pkg/store/experiment/validate.go) and becomes active (ExperimentReady,
CandidatesReady, MirrorReady) once every model it names is available; then the `default` Model's
endpoint splits by the candidates' weights and copies `mirror.percent` % of requests to the mirror,
whose answers reach no one (scheduler/pkg/envoy/processor/incremental.go, resources/resource.go).

The mesh is an HTTP server on loopback taking Open Inference Protocol requests with the `seldon-model`
header, answering with `x-seldon-route`; every request a model answers, mirrored ones too, is counted
the way Seldon's agent counts it (scheduler/pkg/metrics/agent.go: `seldon_model_infer_total`,
`seldon_model_infer_seconds_total` by server, server_replica, model, model_internal, method_type, code;
`seldon_model_infer_api_seconds` by server, server_replica, method, code), exported for a real
Prometheus, which adds the namespace as a PodMonitor would. `splits` records every split applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jsonschema
import kmock
import prometheus_client
from aiohttp import web

from tests.fakes.kube_api import ObjectStore, crd_openapi_schema, deleted, merge, serving, without_status
from tests.support import kserve_models, mlserver, processes
from tests.support import prometheus as prometheus_support
from tests.support.mlflow_s3 import S3Store

CRDS = Path("/work/shared/schemas/seldon")
GROUP, VERSION = "mlops.seldon.io", "v1alpha1"
PLURALS = {"models": "Model", "experiments": "Experiment"}
MERGE_PATCH = "application/merge-patch+json"
SERVER = "mlserver"  # the Server a Model lands on when its spec names none


def crd_schema(plural: str) -> dict[str, Any]:
    return crd_openapi_schema(CRDS / f"mlops.seldon.io_{plural}.yaml", VERSION)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the Kubernetes API ---------------------------------------------------------------------------


@dataclass
class SeldonApi(ObjectStore[tuple[str, str, str]]):
    """The emulator's state; `url` is where the official client should point. Its `watch()` queues
    receive (plural, namespace, name) after every write, deletes included; `writes` holds
    (verb, plural, name)."""

    kinds: dict[str, str] = field(default_factory=lambda: dict(PLURALS))
    group: str = GROUP
    api_version: str = f"{GROUP}/{VERSION}"
    url: str = ""
    conflicts_to_inject: int = 0

    def add_model(self, namespace: str, name: str, storage_uri: str, **spec: Any) -> dict[str, Any]:
        """A Model as the Helm chart or the model's owner would create it."""
        obj = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Model",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageUri": storage_uri, **spec},
        }
        return self._store("models", namespace, name, obj, None)

    # --- the HTTP side (GET and LIST: the store's) -------------------------------------------------

    async def create(self, request: kmock.Request) -> dict[str, Any]:
        plural, namespace = self.key(request)[0], request.namespace or ""
        body = dict(request.data)
        name = str((body.get("metadata") or {}).get("name", ""))
        self.vacant(plural, namespace, name)
        body.pop("status", None)
        body["metadata"] = {**body["metadata"], "namespace": namespace}
        return self._store(plural, namespace, name, body, None)

    async def patch(self, request: kmock.Request) -> dict[str, Any]:
        if request.headers.get("Content-Type") != MERGE_PATCH:
            raise kmock.KubernetesError(415, "UnsupportedMediaType", "custom resources take merge patches")
        current = self.existing(request)
        body = request.data
        if self.conflicts_to_inject > 0:
            self.conflicts_to_inject -= 1
            current["metadata"]["resourceVersion"] = self.version()
        self.fresh(request, current)
        merged = merge(copy.deepcopy(current), without_status(body))
        return self._store(*self.key(request), merged, current)

    async def delete(self, request: kmock.Request) -> dict[str, Any]:
        key = self.remove(request)
        self.notify(key)
        return deleted(key[2])

    def _store(
        self, plural: str, namespace: str, name: str, obj: dict[str, Any], current: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.check(_validator(plural), f"{PLURALS[plural]} {name}", without_status(obj))
        metadata = obj["metadata"]
        if current is None:
            metadata["generation"] = 1
        elif obj.get("spec") != current.get("spec"):
            metadata["generation"] = current["metadata"].get("generation", 1) + 1
        metadata["resourceVersion"] = self.version()
        self.objects[(plural, namespace, name)] = obj
        self.writes.append(("create" if current is None else "patch", plural, name))
        self.notify((plural, namespace, name))
        return obj


@functools.cache
def _validator(plural: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(plural))


@contextlib.asynccontextmanager
async def api_running() -> AsyncIterator[SeldonApi]:
    api = SeldonApi()
    handlers: dict[kmock.action, kmock.Payload] = {
        kmock.action.FETCH: api.fetch,
        kmock.action.LIST: api.listing,
        kmock.action.CREATE: api.create,
        kmock.action.UPDATE: api.patch,
        kmock.action.DELETE: api.delete,
    }
    async with serving([(GROUP, VERSION, plural) for plural in PLURALS], handlers) as url:
        api.url = url
        yield api


# --- the scheduler and agents ---------------------------------------------------------------------


@dataclass
class Loaded:
    """One version of a Model (`<name>_<n>`), served by a real MLServer once it is up."""

    internal: str
    uri: str
    folder: Path
    server: mlserver.ModelServer | None = None
    available: bool = False
    failed: str = ""
    task: asyncio.Task[None] | None = None


@dataclass
class SeldonModel:
    name: str
    namespace: str
    server_name: str
    generation: int = 0
    versions: list[Loaded] = field(default_factory=list)

    @property
    def serving(self) -> Loaded | None:
        """The newest available version: where the Model's traffic goes."""
        return next((v for v in reversed(self.versions) if v.available), None)

    @property
    def latest(self) -> Loaded | None:
        return self.versions[-1] if self.versions else None


@dataclass
class Route:
    candidates: list[tuple[str, int]]
    mirror: tuple[str, int] | None = None


@dataclass
class Request:
    """One call a model answered: `via` is the endpoint asked for (seldon-model), `model` the one that
    answered, `mirrored` a copy whose answer reached no one."""

    via: str
    model: str
    internal: str
    status: int
    latency_ms: float
    mirrored: bool


class SeldonController:
    def __init__(
        self, api: SeldonApi, store: S3Store, folder: Path, *, discovered: Path | None = None
    ) -> None:
        self.api = api
        self.store = store
        self.folder = folder
        self.discovered = discovered
        self.namespace = ""
        self.models: dict[str, SeldonModel] = {}
        self.routes: dict[str, Route] = {}
        self.splits: list[tuple[str, dict[str, int], str | None]] = []  # endpoint, weights %, mirror
        self.requests: list[Request] = []
        self.mesh_url = ""
        self._downloads: dict[str, Path] = {}
        self._credit: dict[str, dict[str, float]] = {}
        self._mirror_count: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._mirrors: set[asyncio.Task[Any]] = set()
        self._changes: asyncio.Queue[tuple[str, str, str]] | None = None
        self._http: httpx.AsyncClient | None = None
        self._runner: web.AppRunner | None = None
        self.registry = prometheus_client.CollectorRegistry()
        agent = ["server", "server_replica", "model", "model_internal", "method_type", "code"]
        self._infer = prometheus_client.Counter(
            "seldon_model_infer", "A count of server inference calls", agent, registry=self.registry
        )
        self._infer_seconds = prometheus_client.Counter(
            "seldon_model_infer_seconds",
            "A sum of server inference call latencies",
            agent,
            registry=self.registry,
        )
        self._api_seconds = prometheus_client.Histogram(
            "seldon_model_infer_api_seconds",
            "A histogram of latencies for inference server",
            ["server", "server_replica", "method", "code"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
            registry=self.registry,
        )
        self._metrics_server: Any = None
        self.metrics_port = 0

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> SeldonController:
        mlserver.require()
        self.folder.mkdir(parents=True, exist_ok=True)
        server, _ = prometheus_client.start_http_server(0, "127.0.0.1", registry=self.registry)
        self._metrics_server = server
        self.metrics_port = int(server.server_port)
        self._http = httpx.AsyncClient(timeout=10)
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", self._mesh)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = processes.free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.mesh_url = f"http://127.0.0.1:{port}"
        self._changes = self.api.watch()
        self._tasks.append(asyncio.create_task(self._watch(), name="seldon-controller"))
        for key in self.api.objects:
            self._changes.put_nowait(key)
        self._publish_targets()
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in [*self._tasks, *self._mirrors]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._mirrors, return_exceptions=True)
        for model in self.models.values():
            for loaded in model.versions:
                await self._unload(loaded)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.aclose()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

    async def _watch(self) -> None:
        assert self._changes is not None
        while True:
            plural, namespace, name = await self._changes.get()
            self.namespace = namespace
            if plural == "models":
                await self._reconcile_model(namespace, name)
            self._reconcile_experiments(namespace)

    # --- Models -----------------------------------------------------------------------------------

    async def _reconcile_model(self, namespace: str, name: str) -> None:
        obj = self.api.get("models", namespace, name)
        model = self.models.get(name)
        if obj is None:  # deleted: the scheduler unloads every version
            if model is not None:
                for loaded in self.models.pop(name).versions:
                    await self._unload(loaded)
            return
        if model is None:
            model = self.models[name] = SeldonModel(name, namespace, str(obj["spec"].get("server") or SERVER))
        generation = int(obj["metadata"].get("generation", 1))
        if generation != model.generation:
            model.generation = generation
            loaded = Loaded(
                f"{name}_{generation}", obj["spec"]["storageUri"], self.folder / f"{name}_{generation}"
            )
            model.versions.append(loaded)
            loaded.task = asyncio.create_task(self._load(model, loaded), name=f"load {loaded.internal}")
        self._write_model_status(model)

    async def _load(self, model: SeldonModel, loaded: Loaded) -> None:
        try:
            if loaded.uri not in self._downloads:
                target = self.folder / "downloads" / str(len(self._downloads) + 1)
                self._downloads[loaded.uri] = await asyncio.to_thread(
                    mlserver.download, loaded.uri, target, self.store
                )
            loaded.server = await asyncio.to_thread(
                mlserver.start, self._downloads[loaded.uri], loaded.internal, loaded.folder / "mlserver"
            )
            while not await asyncio.to_thread(loaded.server.ready):
                if not loaded.server.alive():
                    raise RuntimeError("MLServer exited before the model was ready")
                await asyncio.sleep(0.2)
            loaded.available = True
        except (mlserver.DownloadFailed, RuntimeError) as e:
            loaded.failed = str(e)[-300:]
        if loaded.available:  # the scheduler unloads the versions before the newest available one
            for older in model.versions[: model.versions.index(loaded)]:
                await self._unload(older)
        assert self._changes is not None
        self._changes.put_nowait(("models", model.namespace, model.name))

    async def _unload(self, loaded: Loaded) -> None:
        if loaded.task is not None and not loaded.task.done():
            loaded.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loaded.task
        if loaded.server is not None:
            await asyncio.to_thread(loaded.server.stop)
            loaded.server = None
        loaded.available = False

    def _write_model_status(self, model: SeldonModel) -> None:
        obj = self.api.get("models", model.namespace, model.name)
        latest = model.latest
        if obj is None or latest is None:
            return
        if latest.available:
            state, reason, ok = "ModelAvailable", "", True
        elif latest.failed:
            state, reason, ok = "ModelFailed", latest.failed, False
        else:
            state, reason, ok = "ModelProgressing", "", False
        status = copy.deepcopy(obj.get("status") or {})
        _set(status, "ModelReady", ok, state, reason)
        _set(status, "Ready", ok, state, reason)
        status["replicas"] = 1
        self.api.write_status("models", model.namespace, model.name, status)

    # --- Experiments ------------------------------------------------------------------------------

    def _reconcile_experiments(self, namespace: str) -> None:
        routes: dict[str, Route] = {name: Route([(name, 100)]) for name in self.models}
        for (plural, ns, name), obj in list(self.api.objects.items()):
            if plural != "experiments" or ns != namespace:
                continue
            spec = obj["spec"]
            problem = _scheduler_problem(spec)
            named = [c["name"] for c in spec["candidates"]] + (
                [spec["mirror"]["name"]] if spec.get("mirror") else []
            )
            candidates_ready = all(self._available(c["name"]) for c in spec["candidates"])
            mirror_ready = not spec.get("mirror") or self._available(spec["mirror"]["name"])
            active = problem is None and all(self._available(n) for n in named)
            status = copy.deepcopy(obj.get("status") or {})
            _set(
                status,
                "ExperimentReady",
                active,
                problem or ("experiment active" if active else "experiment not active"),
                "",
            )
            _set(
                status,
                "CandidatesReady",
                candidates_ready,
                "Candidates ready" if candidates_ready else "Candidates not ready",
                "",
            )
            _set(
                status,
                "MirrorReady",
                mirror_ready,
                "Mirror ready" if mirror_ready else "Mirror not ready",
                "",
            )
            _set(status, "Ready", active and candidates_ready and mirror_ready, "", "")
            self.api.write_status("experiments", ns, name, status)
            default = spec.get("default")
            if active and default in routes:
                mirror = spec.get("mirror")
                routes[default] = Route(
                    [(c["name"], int(c["weight"])) for c in spec["candidates"]],
                    (mirror["name"], int(mirror["percent"])) if mirror else None,
                )
        for endpoint, route in routes.items():
            if self.routes.get(endpoint) != route:
                total = sum(w for _, w in route.candidates) or 1
                self.splits.append(
                    (
                        endpoint,
                        {n: round(100 * w / total) for n, w in route.candidates},
                        route.mirror[0] if route.mirror else None,
                    )
                )
        self.routes = routes
        self._publish_targets()

    def _available(self, name: str) -> bool:
        model = self.models.get(name)
        return model is not None and model.serving is not None

    # --- the mesh ---------------------------------------------------------------------------------

    async def _mesh(self, request: web.Request) -> web.Response:
        name = request.headers.get("seldon-model") or request.match_info["name"]
        body = await request.read()
        route = self.routes.get(name)
        if route is None:
            return web.json_response({"error": f"model {name} not found"}, status=404)
        chosen = _pick(route.candidates, self._credit.setdefault(name, {}))
        if route.mirror is not None:
            count = self._mirror_count[name] = self._mirror_count.get(name, 0) + 1
            if count * route.mirror[1] // 100 != (count - 1) * route.mirror[1] // 100:
                task = asyncio.create_task(self._forward(name, route.mirror[0], body, mirrored=True))
                self._mirrors.add(task)
                task.add_done_callback(self._mirrors.discard)
        status, answer, internal = await self._forward(name, chosen, body, mirrored=False)
        return web.Response(
            body=answer,
            status=status,
            content_type="application/json",
            headers={"x-seldon-route": f":{internal}:"},
        )

    async def _forward(self, via: str, name: str, body: bytes, *, mirrored: bool) -> tuple[int, bytes, str]:
        """The agent's reverse proxy: the Model's serving version answers; the call is counted."""
        model = self.models.get(name)
        loaded = model.serving if model is not None else None
        started = time.perf_counter()
        if model is None or loaded is None or loaded.server is None:
            status, answer, internal = 404, b'{"error": "model not loaded"}', f"{name}_0"
        else:
            internal = loaded.internal
            try:
                reply = await self._client().post(
                    f"{loaded.server.url}/v2/models/{internal}/infer",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                status, answer = reply.status_code, reply.content
            except httpx.HTTPError:
                status, answer = 503, b'{"error": "upstream did not answer"}'
        elapsed = time.perf_counter() - started
        server = model.server_name if model is not None else SERVER
        labels = (server, "0", name, internal, "rest", str(status))
        self._infer.labels(*labels).inc()
        self._infer_seconds.labels(*labels).inc(elapsed)
        self._api_seconds.labels(server, "0", "post", str(status)).observe(elapsed)
        self.requests.append(Request(via, name, internal, status, elapsed * 1000, mirrored))
        return status, answer, internal

    def _client(self) -> httpx.AsyncClient:
        assert self._http is not None
        return self._http

    def _publish_targets(self) -> None:
        if self.discovered is not None:
            target: dict[str, object] = {
                "targets": [f"127.0.0.1:{self.metrics_port}"],
                "labels": {"namespace": self.namespace},
            }
            prometheus_support.set_discovered(self.discovered, [target])

    # --- the load generator -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def load(
        self, endpoint: str, rows: list[list[float]] | None = None, rate_per_s: float = 20
    ) -> AsyncIterator[None]:
        """Users' requests to the endpoint Model through the mesh, at `rate_per_s`."""
        task = asyncio.create_task(self._generate(endpoint, rows or kserve_models.ROWS, rate_per_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _generate(self, endpoint: str, rows: list[list[float]], rate_per_s: float) -> None:
        body = kserve_models.infer_body(rows)
        in_flight: set[asyncio.Task[None]] = set()
        limit = asyncio.Semaphore(16)

        async def send(client: aiohttp.ClientSession) -> None:
            try:
                async with client.post(
                    f"{self.mesh_url}/v2/models/{endpoint}/infer",
                    json=body,
                    headers={"seldon-model": endpoint},
                ) as answer:
                    await answer.read()
            except aiohttp.ClientError:
                pass
            finally:
                limit.release()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            try:
                while True:
                    await asyncio.sleep(1 / rate_per_s)
                    if limit.locked():
                        continue
                    await limit.acquire()
                    task = asyncio.create_task(send(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)


def _set(status: dict[str, Any], kind: str, ok: bool, reason: str, message: str) -> None:
    """Knative's condition manager: the transition time moves only when the condition changes."""
    wanted = {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == kind), None)
    if current is not None and {k: current.get(k, "") for k in wanted} == wanted:
        return
    if current is not None:
        conditions.remove(current)
    conditions.append({**wanted, "lastTransitionTime": _now()})


def _scheduler_problem(spec: dict[str, Any]) -> str | None:
    """Seldon's scheduler's checks of an Experiment (validate.go), written here from its source."""
    names = [c["name"] for c in spec.get("candidates") or []]
    mirror = spec.get("mirror")
    if not names and not mirror:
        return "experiment has no candidates or mirror"
    default = spec.get("default")
    if default is not None and default not in names:
        return f"default model {default} not found among the candidates"
    everyone = names + ([mirror["name"]] if mirror else [])
    if len(everyone) != len(set(everyone)):
        return "duplicate model names in the experiment"
    return None


def _pick(candidates: list[tuple[str, int]], credit: dict[str, float]) -> str:
    """Smooth weighted round robin: over any `total` requests each gets its weight's share."""
    total = sum(w for _, w in candidates)
    for name, weight in candidates:
        credit[name] = credit.get(name, 0.0) + weight
    chosen = max(candidates, key=lambda c: credit[c[0]])[0]
    credit[chosen] -= total
    return chosen
