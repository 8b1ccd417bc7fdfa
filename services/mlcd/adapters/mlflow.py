"""The Registry port over an MLflow tracking server: versions, their run's metrics, aliases and tags."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mlcd import logs
from mlcd.adapters import trace_headers
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound, PermanentError
from mlcd.ports import Flavors, ModelVersion

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException

T = TypeVar("T")

EMBEDDED_PORT_OFFSET = 10  # the embedded MLflow server listens on MLCD_HTTP_PORT + 10


log = logs.get(__name__)


def tracking_uri(settings: Settings) -> str:
    """The configured tracking server, else the one `mlcd up` runs beside the API."""
    return settings.mlflow_tracking_uri or f"http://127.0.0.1:{settings.http_port + EMBEDDED_PORT_OFFSET}"


def _mlflow_exception_type() -> type[MlflowException]:
    from mlflow.exceptions import MlflowException

    return MlflowException


class MlflowRegistry:
    def __init__(self, tracking_uri: str, timeout_s: float = 30.0) -> None:
        self.tracking_uri = tracking_uri
        self.timeout_s = timeout_s
        self._client: Any = None
        self._error_type: type[MlflowException] | None = None

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        if self._error_type is None:  # mlflow takes seconds to import: do it once, off the event loop
            self._error_type = await asyncio.to_thread(_mlflow_exception_type)
        mlflow_error = self._error_type
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s)
        except mlflow_error as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"MLflow: {what}: {e.message}") from e
            if e.error_code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "PERMISSION_DENIED"}:
                raise PermanentError(f"MLflow refused {what}: {e.message}") from e
            raise AdapterUnavailable(f"MLflow at {self.tracking_uri} failed {what}: {e.message}") from e
        except TimeoutError as e:
            raise AdapterUnavailable(
                f"MLflow at {self.tracking_uri} did not answer within {self.timeout_s:g}s (timeout): {what}"
            ) from e
        except OSError as e:
            raise AdapterUnavailable(f"MLflow at {self.tracking_uri} did not answer {what}: {e!r}") from e

    async def get_version(self, model: str, version: str) -> ModelVersion:
        def fetch() -> ModelVersion:
            client = self._mlflow()
            mv = client.get_model_version(model, version)
            return _model_version(client, mv)

        return await self._call(f"get version {model}/{version}", fetch)

    async def version_by_alias(self, model: str, alias: str) -> ModelVersion | None:
        # MLflow answers a missing alias with INVALID_PARAMETER_VALUE; the model's alias map is unambiguous.
        def fetch() -> ModelVersion | None:
            client = self._mlflow()
            version = (client.get_registered_model(model).aliases or {}).get(alias)
            return (
                None if version is None else _model_version(client, client.get_model_version(model, version))
            )

        try:
            return await self._call(f"read alias {model}@{alias}", fetch)
        except NotFound:
            return None

    async def flavors(self, version: ModelVersion) -> Flavors:
        return await self._call(
            f"read the MLmodel of {version.model}/{version.version}",
            lambda: mlmodel_flavors(self.tracking_uri, version.serving_uri),
        )

    async def version_by_tag(self, model: str, key: str, value: str) -> ModelVersion | None:
        def search() -> ModelVersion | None:
            client = self._mlflow()
            found = client.search_model_versions(
                f"name = {_literal(model)} and tags.`{key}` = {_literal(value)}"
            )
            newest = max(found, key=lambda mv: int(mv.version), default=None)
            return None if newest is None else _model_version(client, newest)

        return await self._call(f"find {model} tagged {key}={value}", search)

    async def set_alias(self, model: str, alias: str, version: str) -> None:
        await self._call(
            f"set alias {model}@{alias}",
            lambda: self._mlflow().set_registered_model_alias(model, alias, version),
        )

    async def delete_alias(self, model: str, alias: str) -> None:
        try:
            await self._call(
                f"delete alias {model}@{alias}",
                lambda: self._mlflow().delete_registered_model_alias(model, alias),
            )
        except NotFound:
            return

    async def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None:
        def write() -> None:
            client = self._mlflow()
            for key, value in tags.items():
                client.set_model_version_tag(model, version, key, value)

        await self._call(f"tag {model}/{version}", write)

    async def ping(self) -> None:
        import httpx

        try:
            async with httpx.AsyncClient(event_hooks=trace_headers.HTTPX_HOOKS, timeout=5) as client:
                response = await client.get(f"{self.tracking_uri.rstrip('/')}/health")
            response.raise_for_status()
        except httpx.HTTPError as e:
            raise AdapterUnavailable(f"MLflow at {self.tracking_uri} is not healthy: {e!r}") from e


def _literal(value: str) -> str:
    """A string literal of MLflow's search filter grammar."""
    if "'" in value or "\\" in value:
        raise PermanentError(f"cannot search MLflow for a value with quotes or backslashes: {value!r}")
    return f"'{value}'"


def _model_version(client: Any, mv: Any) -> ModelVersion:
    """The version with its run's figures and the artifact store's own URI of its files.

    MLflow 3 registers a version's `source` as `models:/m-…`, which no model server outside MLflow can
    read; `get_model_version_download_uri` resolves it to the logged model's artifact location.
    """
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        metrics = {k: float(v) for k, v in run.data.metrics.items()}
        params = dict(run.data.params)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    tags.update(mv.tags or {})
    return ModelVersion(
        model=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=mv.source,
        metrics=metrics,
        params=params,
        tags=tags,
        aliases=tuple(mv.aliases or ()),
        artifact_uri=str(client.get_model_version_download_uri(mv.name, mv.version)),
    )


def mlmodel_flavors(tracking_uri: str, artifact_uri: str) -> Flavors:
    """The flavors in the MLmodel file under `artifact_uri`; empty when it cannot be read."""
    import tempfile

    import mlflow.artifacts
    import yaml

    with tempfile.TemporaryDirectory(prefix="mlcd-mlmodel-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_uri.rstrip('/')}/MLmodel", dst_path=folder, tracking_uri=tracking_uri
            )
            with open(path) as mlmodel:
                described = yaml.safe_load(mlmodel) or {}
        except Exception as e:  # any store or parse failure leaves the flavors unknown, never the version
            log.info("MLmodel not read; flavors unknown", artifact_uri=artifact_uri, error=repr(e))
            return {}
    flavors = described.get("flavors") if isinstance(described, dict) else None
    if not isinstance(flavors, dict):
        return {}
    return {str(name): settings if isinstance(settings, dict) else {} for name, settings in flavors.items()}


def build(settings: Settings) -> MlflowRegistry:
    # The MLflow client retries a dead server for minutes by default; the runtime owns retries. Its
    # per-request timeout follows the setting, so the worker thread of a call given up on ends soon after.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(settings.mlflow_timeout_s))))
    return MlflowRegistry(tracking_uri(settings), timeout_s=settings.mlflow_timeout_s)
