"""Local serving, the embedded default: model revisions loaded from MLflow, served over the Open
Inference Protocol (v2) on the main HTTP port, traffic split between stable and canary by percentage.

It implements the Serving port, so the deployer promotes and rolls back here exactly as on KServe, and
it counts requests, errors and latency per revision (`figures`) for the embedded analysis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from mlcd import logs
from mlcd.adapters import mlflow as mlflow_adapter
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound
from mlcd.local import inference_protocol as protocol
from mlcd.local import serving_state
from mlcd.local.revision_stats import RevisionStats, set_traffic
from mlcd.ports import ServingState

log = logs.get(__name__)

LOAD_TIMEOUT_S = 120.0


class PredictionFailed(Exception):
    """The model revision raised while predicting (counted as an error of that revision)."""


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    outputs: Any


class CanaryRouter:
    """Deterministic weighted routing: after n requests the canary has had round(n * percent / 100)."""

    def __init__(self) -> None:
        self.served = 0
        self.to_canary = 0

    def canary_next(self, percent: int) -> bool:
        self.served += 1
        if self.to_canary * 100 < percent * self.served:
            self.to_canary += 1
            return True
        return False


class LocalServing:
    def __init__(self, home: Path, tracking_uri: str, load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.folder = home / "serving"
        self.tracking_uri = tracking_uri
        self.load_timeout_s = load_timeout_s
        self.stats = RevisionStats()
        self._state_path = self.folder / "state.json"
        self._state = serving_state.load(self._state_path)
        self._models: dict[tuple[str, str], Any] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._counters: dict[str, CanaryRouter] = {}
        for model, routing in self._state.models.items():
            set_traffic(model, routing.split())

    # --- the Serving port -------------------------------------------------------------------------

    async def state(self, model: str) -> ServingState:
        routing = self._state.models.get(model, serving_state.Routing())
        problems = [
            f"version {r.version}: {self._failed[(model, r.version)]}"
            for r in (routing.stable, routing.canary)
            if r is not None and (model, r.version) in self._failed
        ]
        return ServingState(
            model=model,
            stable_version=routing.stable.version if routing.stable else None,
            canary_version=routing.canary.version if routing.canary else None,
            canary_percent=routing.canary.percent if routing.canary else 0,
            ready=routing.stable is not None and not problems,
            message="; ".join(problems),
        )

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        await self._load_or_mark_failed(model, version)
        routing = self._routing(model)
        self._route(
            model,
            routing.model_copy(
                update={"canary": serving_state.Canary(version=version, uri=artifact_uri, percent=percent)}
            ),
        )

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        await self._load_or_mark_failed(model, version)
        self._route(
            model, serving_state.Routing(stable=serving_state.Revision(version=version, uri=artifact_uri))
        )

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        routing = self._routing(model)
        if version is None or artifact_uri is None:
            self._route(model, routing.model_copy(update={"canary": None}))
            return
        await self._load_or_mark_failed(model, version)
        self._route(
            model, serving_state.Routing(stable=serving_state.Revision(version=version, uri=artifact_uri))
        )

    async def ping(self) -> None:
        return None

    # --- what the analysis and the HTTP routes read -----------------------------------------------

    def figures(self, model: str, version: str, window_s: float) -> dict[str, float]:
        return self.stats.figures(model, version, window_s)

    def routing(self, model: str) -> serving_state.Routing | None:
        return self._state.models.get(model)

    def ready(self, model: str) -> bool:
        routing = self._state.models.get(model)
        return (
            routing is not None
            and routing.stable is not None
            and (model, routing.stable.version) in self._models
        )

    async def predict(self, model: str, data: Any, version: str | None = None) -> Prediction:
        """Route one request (or send it to `version`), predict in a worker thread, count the outcome."""
        chosen = version or self._pick(model)
        if chosen not in self._routing(model).split():
            raise NotFound(f"model {model} does not serve version {chosen}")
        loaded = await self._loaded(model, chosen)
        started = time.perf_counter()
        try:
            outputs = await asyncio.to_thread(loaded.predict, data)
        except Exception as e:  # whatever the model raises is that revision's error, not the server's
            self.stats.observe(model, chosen, time.perf_counter() - started, error=True)
            raise PredictionFailed(f"model {model} version {chosen} failed: {type(e).__name__}: {e}") from e
        self.stats.observe(model, chosen, time.perf_counter() - started, error=False)
        return Prediction(model, chosen, outputs)

    # --- internals --------------------------------------------------------------------------------

    def _routing(self, model: str) -> serving_state.Routing:
        return self._state.models.get(model, serving_state.Routing())

    def _route(self, model: str, routing: serving_state.Routing) -> None:
        previous = self._state.models.get(model)
        if previous is not None:
            set_traffic(model, dict.fromkeys(previous.split(), 0))
        self._state.models[model] = routing
        self._counters[model] = CanaryRouter()
        serving_state.save(self._state_path, self._state)
        set_traffic(model, routing.split())
        log.info("local serving routes", model=model, split=routing.split())

    def _pick(self, model: str) -> str:
        routing = self._state.models.get(model)
        if routing is None or routing.stable is None:
            raise NotFound(f"model {model} is not served here")
        canary = routing.canary
        if canary is None or (model, canary.version) in self._failed:
            return routing.stable.version
        counter = self._counters.setdefault(model, CanaryRouter())
        return canary.version if counter.canary_next(canary.percent) else routing.stable.version

    async def _load_or_mark_failed(self, model: str, version: str) -> None:
        # A revision that cannot load is served no traffic and shows as not Ready (as on KServe);
        # an unreachable MLflow is an outage and retried by the runtime.
        try:
            await self._loaded(model, version)
        except AdapterUnavailable:
            raise
        except Exception as e:  # any load failure marks the revision failed for the analysis to see
            self._failed[(model, version)] = f"failed to load: {type(e).__name__}: {e}"
            log.warning("revision failed to load", model=model, version=version, error=str(e))

    async def _loaded(self, model: str, version: str) -> Any:
        key = (model, version)
        if key in self._models:
            return self._models[key]
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._models:
                try:
                    self._models[key] = await asyncio.wait_for(
                        asyncio.to_thread(self._load, model, version), self.load_timeout_s
                    )
                except TimeoutError as e:
                    raise AdapterUnavailable(
                        f"loading {model} version {version} took over {self.load_timeout_s}s"
                    ) from e
                self._failed.pop(key, None)
        return self._models[key]

    def _load(self, model: str, version: str) -> Any:
        import mlflow.artifacts
        import mlflow.pyfunc
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        target = self.folder / "models" / model / version
        if not (target / "MLmodel").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                try:
                    # The registry's download URI is the artifact's own location: `models:/` URIs would
                    # resolve through MLflow's process-wide registry URI, not the one given here.
                    client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                    fetched = mlflow.artifacts.download_artifacts(
                        artifact_uri=client.get_model_version_download_uri(model, version),
                        dst_path=scratch,
                        tracking_uri=self.tracking_uri,
                    )
                except MlflowException as e:
                    if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                        raise NotFound(f"MLflow has no {model} version {version}") from e
                    raise AdapterUnavailable(f"MLflow at {self.tracking_uri}: {e.message}") from e
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(fetched, target)
        loaded = mlflow.pyfunc.load_model(str(target))
        log.info("revision loaded", model=model, version=version)
        return loaded


def build(settings: Settings) -> LocalServing:
    # MLflow draws a progress bar on every model download; in a service log that is noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return LocalServing(settings.home, mlflow_adapter.tracking_uri(settings))


def router(serving: LocalServing) -> APIRouter:
    """The Open Inference Protocol (v2) routes of local serving."""
    routes = APIRouter(prefix="/v2/models", tags=["inference"])

    def served(model: str) -> serving_state.Routing:
        routing = serving.routing(model)
        if routing is None or routing.stable is None:
            raise HTTPException(404, f"model {model} is not served here")
        return routing

    @routes.get("/{model}", summary="Model metadata")
    async def metadata(model: str) -> dict[str, Any]:
        routing = served(model)
        return {
            "name": model,
            "versions": list(routing.split()),
            "platform": "mlflow",
            "traffic": routing.split(),
            "inputs": [],
            "outputs": [],
        }

    @routes.get("/{model}/ready", summary="Model readiness")
    async def ready(model: str) -> Response:
        served(model)
        if not serving.ready(model):
            raise HTTPException(503, f"model {model} is not loaded yet")
        return Response(status_code=200)

    async def infer(
        model: str, request: protocol.InferenceRequest, version: str | None
    ) -> protocol.InferenceResponse:
        served(model)
        try:
            data = protocol.model_input(request)
        except protocol.BadTensor as e:
            raise HTTPException(400, str(e)) from e
        try:
            prediction = await serving.predict(model, data, version)
        except NotFound as e:
            raise HTTPException(404, str(e)) from e
        except PredictionFailed as e:
            raise HTTPException(500, str(e)) from e
        return protocol.InferenceResponse(
            model_name=model,
            model_version=prediction.version,
            id=request.id or uuid.uuid4().hex,
            outputs=protocol.outputs(prediction.outputs),
        )

    @routes.post("/{model}/infer", summary="Predict; the request is routed to the stable or canary revision")
    async def infer_routed(model: str, request: protocol.InferenceRequest) -> protocol.InferenceResponse:
        return await infer(model, request, None)

    @routes.post("/{model}/versions/{version}/infer", summary="Predict with one revision")
    async def infer_pinned(
        model: str, version: str, request: protocol.InferenceRequest
    ) -> protocol.InferenceResponse:
        return await infer(model, request, version)

    return routes
