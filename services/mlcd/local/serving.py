"""Local serving, the embedded default: model revisions loaded from MLflow, served over the Open
Inference Protocol (v2) on the main HTTP port, traffic split between stable and canary by percentage.

It implements the Serving port, so the deployer promotes and rolls back here exactly as on KServe, and
it counts requests, errors and latency per revision (`figures`) for the embedded analysis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from mlcd import __version__, logs
from mlcd.adapters import mlflow as mlflow_adapter
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound
from mlcd.local import inference_protocol as protocol
from mlcd.local import serving_state
from mlcd.local.revision_stats import RevisionStats, set_traffic
from mlcd.ports import PYFUNC, Flavors, ModelVersion, ServingState

log = logs.get(__name__)

LOAD_TIMEOUT_S = 120.0
RETRY_LOAD_S = 5.0


class PredictionFailed(Exception):
    """The model revision raised while predicting (counted as an error of that revision)."""


class RevisionNotLoaded(Exception):
    """The revision asked for failed to load, or has not loaded yet (answered 503)."""


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    outputs: list[protocol.Tensor]


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


@dataclass(frozen=True)
class LoadedRevision:
    """One model version in memory: the MLflow pyfunc model and what its signature says it takes."""

    model: Any
    signature: protocol.Signature


class LocalServing:
    def __init__(
        self,
        home: Path,
        tracking_uri: str,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        retry_load_s: float = RETRY_LOAD_S,
    ) -> None:
        self.folder = home / "serving"
        self.tracking_uri = tracking_uri
        self.load_timeout_s = load_timeout_s
        self.retry_load_s = retry_load_s
        self.stats = RevisionStats()
        self._state_path = self.folder / "state.json"
        self._state = serving_state.load(self._state_path)
        self._models: dict[tuple[str, str], LoadedRevision] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._loading: dict[tuple[str, str], asyncio.Lock] = {}
        self._counters: dict[str, CanaryRouter] = {}
        for model, routing in self._state.models.items():
            set_traffic(model, routing.split())

    async def load_serving_revisions(self) -> int:
        """Load every revision the saved routing serves, so models are Ready before any request.

        Call at start-up. A revision that cannot load is marked failed (as a canary that fails to load
        is) and not tried again here; one MLflow could not supply stays pending. Returns how many are
        pending.
        """
        pending = 0
        for model, routing in list(self._state.models.items()):
            for version in routing.split():
                if (model, version) in self._models or (model, version) in self._failed:
                    continue
                try:
                    await self._load_or_mark_failed(model, version)
                except AdapterUnavailable as e:
                    pending += 1
                    log.warning("revision not loaded yet", model=model, version=version, error=str(e))
        return pending

    async def run(self, stop: asyncio.Event) -> None:
        """A supervised worker: loads the served revisions at start, then retries those MLflow could
        not supply yet, until `stop`."""
        while not stop.is_set():
            await self.load_serving_revisions()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_load_s)

    # --- the Serving port -------------------------------------------------------------------------

    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        """Local serving loads a version as an MLflow pyfunc, from any artifact store MLflow wrote."""
        if flavors and PYFUNC not in flavors:
            return (
                f"version {version.version} has no {PYFUNC} flavor (it has {', '.join(flavors)}); "
                "local serving loads models as MLflow pyfunc"
            )
        return None

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

    def unready(self, model: str, version: str | None = None) -> str | None:
        """Why `model` (or one `version` of it) cannot answer a request without loading first; None
        when it is Ready. A canary that failed to load is sent no traffic, so it does not count."""
        routing = self._state.models.get(model)
        if routing is None or routing.stable is None:
            return f"model {model} is not served here"
        versions = routing.split()
        if version is not None:
            if version not in versions:
                return f"model {model} does not serve version {version}"
            versions = {version: versions[version]}
        for served in versions:
            key = (model, served)
            if key in self._models:
                continue
            if key not in self._failed:
                return f"model {model} version {served} is not loaded yet"
            if version is not None or served == routing.stable.version:
                return f"model {model} version {served} {self._failed[key]}"
        return None

    def server_unready(self) -> str | None:
        """Why the server is not Ready (every served model must be); None when it is."""
        problems = [problem for model in self._state.models if (problem := self.unready(model))]
        return "; ".join(problems) or None

    async def revision(self, model: str, version: str | None = None) -> tuple[str, LoadedRevision]:
        """The revision `version` of `model` (its stable one by default), loaded."""
        routing = self._state.models.get(model)
        if routing is None or routing.stable is None:
            raise NotFound(f"model {model} is not served here")
        chosen = version or routing.stable.version
        if chosen not in routing.split():
            raise NotFound(f"model {model} does not serve version {chosen}")
        return chosen, await self._revision(model, chosen)

    async def predict(self, model: str, inputs: Any, version: str | None = None) -> Prediction:
        """Route one request (or send it to `version`), predict in a worker thread, count the outcome.

        `inputs` are request tensors (`protocol.Tensor`), or rows: one [n, features] array-like.
        Raises NotFound, `protocol.BadRequest` when the inputs do not fit the model's signature,
        RevisionNotLoaded and PredictionFailed (counted as the revision's error).
        """
        import numpy as np

        chosen = version or self._pick(model)
        if chosen not in self._routing(model).split():
            raise NotFound(f"model {model} does not serve version {chosen}")
        revision = await self._revision(model, chosen)
        tensors = (
            inputs
            if isinstance(inputs, list) and all(isinstance(t, protocol.Tensor) for t in inputs) and inputs
            else [protocol.Tensor("input-0", np.asarray(inputs))]
        )
        data = protocol.model_input(tensors, revision.signature)
        started = time.perf_counter()
        try:
            outputs = await asyncio.to_thread(revision.model.predict, data)
        except Exception as e:  # whatever the model raises is that revision's error, not the server's
            self.stats.observe(model, chosen, time.perf_counter() - started, error=True)
            raise PredictionFailed(f"model {model} version {chosen} failed: {type(e).__name__}: {e}") from e
        self.stats.observe(model, chosen, time.perf_counter() - started, error=False)
        return Prediction(model, chosen, protocol.output_tensors(outputs, revision.signature.output_names))

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

    async def _revision(self, model: str, version: str) -> LoadedRevision:
        try:
            return await self._loaded(model, version)
        except (NotFound, AdapterUnavailable):
            raise
        except Exception as e:  # a revision that cannot load is not Ready; that is no fault of the server
            raise RevisionNotLoaded(
                f"model {model} version {version} failed to load: {type(e).__name__}: {e}"
            ) from e

    async def _loaded(self, model: str, version: str) -> LoadedRevision:
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

    def _load(self, model: str, version: str) -> LoadedRevision:
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
        return LoadedRevision(loaded, signature(loaded))


def signature(loaded: Any) -> protocol.Signature:
    """What an MLflow pyfunc model takes and returns, from its signature; without one, the names of
    the features the model was fitted on (scikit-learn's `feature_names_in_`), if it kept them."""
    from mlflow.types.schema import DataType

    inputs, outputs = loaded.metadata.get_input_schema(), loaded.metadata.get_output_schema()
    # An unnamed output is called what `protocol.output_tensors` calls it in a response.
    unnamed_output = (
        protocol.UNNAMED_OUTPUT if outputs is not None and len(outputs.inputs) == 1 else "output-{}"
    )
    output_meta = tuple(_tensor_metadata(outputs, DataType, unnamed_output)) if outputs is not None else ()
    output_names = tuple(t.name for t in output_meta)
    if inputs is None:
        try:
            raw = loaded.get_raw_model()
        except Exception:  # a flavor without a raw model to look at keeps the request's own layout
            raw = None
        names = getattr(raw, "feature_names_in_", None)
        if names is None:
            return protocol.Signature(outputs=output_meta, output_names=output_names)
        return protocol.Signature(
            layout="columns",
            names=tuple(str(n) for n in names),
            dtypes=(None,) * len(names),
            outputs=output_meta,
            output_names=output_names,
        )
    specs = inputs.inputs
    input_meta = tuple(_tensor_metadata(inputs, DataType, "input-{}"))
    tensors = inputs.is_tensor_spec()
    if not tensors and not inputs.has_input_names():
        return protocol.Signature(inputs=input_meta, outputs=output_meta, output_names=output_names)
    return protocol.Signature(
        layout="tensors" if tensors else "columns",
        names=tuple(spec.name or "" for spec in specs),
        dtypes=tuple(
            spec.type.name if tensors else _COLUMN_DTYPES.get(getattr(spec.type, "name", ""))
            for spec in specs
        ),
        required=tuple(bool(getattr(spec, "required", True)) for spec in specs),
        inputs=input_meta,
        outputs=output_meta,
        output_names=output_names,
    )


# MLflow column types → (numpy dtype a column is cast to, the protocol's datatype).
_COLUMNS = {
    "boolean": ("bool", "BOOL"),
    "integer": ("int32", "INT32"),
    "long": ("int64", "INT64"),
    "float": ("float32", "FP32"),
    "double": ("float64", "FP64"),
    "string": (None, "BYTES"),
    "binary": (None, "BYTES"),
    "datetime": ("datetime64[ns]", "BYTES"),
}
_COLUMN_DTYPES = {name: dtype for name, (dtype, _) in _COLUMNS.items()}


def _tensor_metadata(schema: Any, data_type: Any, unnamed: str) -> list[protocol.TensorMetadata]:
    found: list[protocol.TensorMetadata] = []
    for i, spec in enumerate(schema.inputs):
        if schema.is_tensor_spec():
            datatype = protocol.datatype_of(spec.type)
            shape = [int(d) for d in spec.shape]
        else:
            kind = spec.type.name if isinstance(spec.type, data_type) else ""
            datatype, shape = _COLUMNS.get(kind, (None, "BYTES"))[1], [-1]
        found.append(
            protocol.TensorMetadata(name=spec.name or unnamed.format(i), datatype=datatype, shape=shape)
        )
    return found


def build(settings: Settings) -> LocalServing:
    # MLflow draws a progress bar on every model download; in a service log that is noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return LocalServing(settings.home, mlflow_adapter.tracking_uri(settings))


_STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    protocol.BadRequest: 400,
    PredictionFailed: 500,
    RevisionNotLoaded: 503,
    AdapterUnavailable: 503,
}


class _ProtocolRoute(APIRoute):
    """Answers errors as the protocol does, `{"error": message}`, in whichever app mounts the routes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except tuple(_STATUS) as e:
                status = next(code for cls, code in _STATUS.items() if isinstance(e, cls))
                headers = {"Retry-After": "5"} if status == 503 else None
                return JSONResponse({"error": str(e)}, status_code=status, headers=headers)

        return answer


def router(serving: LocalServing) -> APIRouter:
    """The Open Inference Protocol (v2) routes of local serving, as KServe and Triton serve them."""
    routes = APIRouter(prefix="/v2", tags=["inference"], route_class=_ProtocolRoute)

    @routes.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "mlcd", "version": __version__, "extensions": ["binary_tensor_data"]}

    @routes.get("/health/live", summary="The server is live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @routes.get("/health/ready", summary="Every served model is ready", responses={503: {}})
    async def server_ready() -> JSONResponse:
        problem = serving.server_unready()
        if problem is None:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": problem}, status_code=503, headers={"Retry-After": "5"})

    async def metadata(model: str, version: str | None) -> dict[str, Any]:
        chosen, revision = await serving.revision(model, version)
        routing = serving.routing(model) or serving_state.Routing()
        answer: dict[str, Any] = {
            "name": model,
            "versions": [chosen] if version else list(routing.split()),
            "platform": "mlflow",
            "inputs": [t.model_dump() for t in revision.signature.inputs],
            "outputs": [t.model_dump() for t in revision.signature.outputs],
        }
        if version is None:
            answer["traffic"] = routing.split()
        return answer

    @routes.get("/models/{model}", summary="Model metadata: the stable revision's inputs and outputs")
    async def model_metadata(model: str) -> dict[str, Any]:
        return await metadata(model, None)

    @routes.get("/models/{model}/versions/{version}", summary="Metadata of one revision")
    async def version_metadata(model: str, version: str) -> dict[str, Any]:
        return await metadata(model, version)

    def ready(model: str, version: str | None) -> dict[str, Any]:
        problem = serving.unready(model, version)
        if problem is not None:
            raise NotFound(problem) if serving.routing(model) is None else RevisionNotLoaded(problem)
        return {"name": model, "ready": True}

    @routes.get("/models/{model}/ready", summary="Model readiness", responses={503: {}})
    async def model_ready(model: str) -> dict[str, Any]:
        return ready(model, None)

    @routes.get("/models/{model}/versions/{version}/ready", summary="Revision readiness")
    async def version_ready(model: str, version: str) -> dict[str, Any]:
        return ready(model, version)

    async def infer(model: str, request: Request, version: str | None) -> Response:
        encoding = request.headers.get("content-encoding", "identity")
        if encoding != "identity":
            raise protocol.BadRequest(f"Content-Encoding {encoding} is not supported; send the body as is")
        asked, tensors = protocol.read_request(
            await request.body(), request.headers.get(protocol.HEADER_LENGTH)
        )
        prediction = await serving.predict(model, tensors, version)
        head = {"model_name": model, "model_version": prediction.version, "id": asked.id or uuid.uuid4().hex}
        body, headers = protocol.response(asked, head, prediction.outputs)
        return Response(body, headers=headers)

    body = {"requestBody": protocol.openapi_request_body()}

    @routes.post(
        "/models/{model}/infer",
        summary="Predict; the request is routed to the stable or canary revision",
        openapi_extra=body,
    )
    async def infer_routed(model: str, request: Request) -> Response:
        return await infer(model, request, None)

    @routes.post(
        "/models/{model}/versions/{version}/infer", summary="Predict with one revision", openapi_extra=body
    )
    async def infer_pinned(model: str, version: str, request: Request) -> Response:
        return await infer(model, request, version)

    @routes.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def unknown(path: str) -> Response:
        raise NotFound(f"local serving has no /v2/{path}")

    return routes
