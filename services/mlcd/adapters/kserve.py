"""The Serving port over KServe InferenceServices (`serving.kserve.io/v1beta1`), both canary styles.

The InferenceService of each model is created by the Helm chart or whoever installs the model's runtime;
mlcd only reads and patches it (its Role needs get/list/watch/patch, never create or delete). Per model,
the policy's `rollout.mode` picks the canary style: "serverless" sets `spec.predictor.canaryTrafficPercent`
(Knative keeps the previous rolled-out revision for the rest); "raw" (KServe v0.20+ Standard mode) adds
a named entry to `spec.canary` with its `trafficPercent`. Which model versions run where is kept in
annotations, since KServe names revisions, not model versions.

Every write is a JSON merge patch carrying the resourceVersion it was computed from (a concurrent write
answers 409, retried here from a fresh read, then raised as Conflict), and the object it produces is
validated against the InferenceService CRD's openAPIV3Schema before it is sent. The schema is KServe's
(Apache License 2.0), bundled as kserve_inferenceservice_schema.json.gz.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gzip
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal, TypeVar

from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, ConfigError, Conflict, NotFound, PermanentError
from mlcd.policy.book import PolicyBook
from mlcd.ports import ServingState

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
STABLE_VERSION = "mlcd.dev/stable-version"
STABLE_URI = "mlcd.dev/stable-uri"
CANARY_VERSION = "mlcd.dev/canary-version"
Mode = Literal["serverless", "raw"]
Patch = dict[str, Any]
T = TypeVar("T")


# --- the schema -----------------------------------------------------------------------------------


@functools.cache
def _validator() -> Any:
    import jsonschema

    raw = resources.files("mlcd.adapters").joinpath("kserve_inferenceservice_schema.json.gz").read_bytes()
    schema = json.loads(gzip.decompress(raw))["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def schema_problems(obj: dict[str, Any]) -> list[str]:
    """Why `obj` (status aside) is not a valid InferenceService; empty when it is."""
    written = {k: v for k, v in obj.items() if k != "status"}
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in _validator().iter_errors(written)
    ]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


# --- patches, as plain functions of the current object --------------------------------------------


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def _predictor(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("spec", {}).get("predictor") or {})


def _storage_uri(predictor: dict[str, Any]) -> str:
    return str((predictor.get("model") or {}).get("storageUri", ""))


def _stable_annotations(obj: dict[str, Any]) -> dict[str, str]:
    """The stable revision as annotations; an object mlcd never touched: its current storageUri."""
    notes = _annotations(obj)
    return {
        STABLE_VERSION: notes.get(STABLE_VERSION, ""),
        STABLE_URI: notes.get(STABLE_URI) or _storage_uri(_predictor(obj)),
    }


def canary_name(version: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"canary-v{version}".lower()).strip("-")[:63]


def canary_patch(obj: dict[str, Any], mode: Mode, version: str, uri: str, percent: int) -> Patch:
    metadata = {"annotations": {**_stable_annotations(obj), CANARY_VERSION: version}}
    if mode == "serverless":
        spec: Patch = {"predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": uri}}}
    else:
        base = {k: v for k, v in _predictor(obj).items() if k not in {"canaryTrafficPercent", "name"}}
        # The canary's model is a full container spec there, whose name the CRD requires.
        model = {"name": canary_name(version), **(base.get("model") or {}), "storageUri": uri}
        predictor = {**base, "name": canary_name(version), "model": model}
        spec = {"canary": [{"predictor": predictor, "trafficPercent": percent}]}
    return {"metadata": metadata, "spec": spec}


def stable_patch(obj: dict[str, Any], mode: Mode, version: str, uri: str) -> Patch:
    """All traffic to `version` as the stable revision; any canary is dropped."""
    metadata = {"annotations": {STABLE_VERSION: version, STABLE_URI: uri, CANARY_VERSION: None}}
    predictor: Patch = {"model": {"storageUri": uri}}
    spec: Patch = {"predictor": predictor}
    if mode == "serverless":
        predictor["canaryTrafficPercent"] = None
    if obj.get("spec", {}).get("canary") is not None:
        spec["canary"] = None
    return {"metadata": metadata, "spec": spec}


def traffic_back_patch(obj: dict[str, Any], mode: Mode) -> Patch | None:
    """First move of a rollback: no traffic to the canary, before the spec is restored."""
    if mode == "serverless" and _predictor(obj).get("canaryTrafficPercent") is not None:
        return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    if mode == "raw" and obj.get("spec", {}).get("canary"):
        return {"spec": {"canary": None}}
    return None


def serving_state(model: str, obj: dict[str, Any], mode: Mode) -> ServingState:
    notes = _annotations(obj)
    status = obj.get("status") or {}
    ready_condition: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    problems: list[str] = []
    if ready_condition.get("status") != "True":
        problems.append(
            ready_condition.get("message") or ready_condition.get("reason") or "Ready is not True"
        )
    if mode == "serverless":
        percent = _predictor(obj).get("canaryTrafficPercent")
        predictor_status = (status.get("components") or {}).get("predictor") or {}
        created, ready = (
            predictor_status.get("latestCreatedRevision"),
            predictor_status.get("latestReadyRevision"),
        )
        if created and created != ready:
            problems.append(f"revision {created} is not ready (latest ready: {ready})")
    else:
        canaries = obj.get("spec", {}).get("canary") or []
        percent = canaries[0]["trafficPercent"] if canaries else None
        for entry in status.get("canaryStatuses") or []:
            if not entry.get("ready"):
                problems.append(f"canary {entry.get('name')} is not ready")
    generation, observed = obj.get("metadata", {}).get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        problems.append(f"generation {generation} not yet observed (at {observed})")
    return ServingState(
        model=model,
        stable_version=notes.get(STABLE_VERSION) or None,
        canary_version=notes.get(CANARY_VERSION) if percent is not None else None,
        canary_percent=int(percent or 0),
        ready=not problems,
        message="; ".join(problems),
    )


# --- the adapter ----------------------------------------------------------------------------------


class KServeServing:
    def __init__(
        self,
        api_client: Callable[[], Any],
        namespace: str,
        policies: PolicyBook,
        *,
        timeout_s: float = 10.0,
        conflict_retries: int = 3,
    ) -> None:
        """`api_client` returns a kubernetes.client.ApiClient (built lazily, in a worker thread)."""
        self._make_client = api_client
        self._client: Any = None
        self.namespace = namespace
        self.policies = policies
        self.timeout_s = timeout_s
        self.conflict_retries = conflict_retries

    def _target(self, model: str) -> tuple[str, Mode]:
        policy = self.policies.get(model)
        if policy is None:
            return model, "serverless"
        return policy.serving_name or model, policy.rollout.mode

    async def state(self, model: str) -> ServingState:
        name, mode = self._target(model)
        return serving_state(model, await self._get(name), mode)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        name, mode = self._target(model)
        await self._patch(name, lambda obj: canary_patch(obj, mode, version, artifact_uri, percent))

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        name, mode = self._target(model)
        await self._patch(name, lambda obj: stable_patch(obj, mode, version, artifact_uri))

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        name, mode = self._target(model)
        await self._patch(name, lambda obj: traffic_back_patch(obj, mode))
        if version is None or artifact_uri is None:
            await self._patch(name, lambda obj: stable_patch(obj, mode, *_stable_of(obj)))
        else:
            await self._patch(name, lambda obj: stable_patch(obj, mode, version, artifact_uri))

    async def ping(self) -> None:
        def list_some() -> Any:
            return self._api().list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, limit=1, _request_timeout=self.timeout_s
            )

        await self._call(f"list InferenceServices in {self.namespace}", list_some)

    # --- internals --------------------------------------------------------------------------------

    def _api(self) -> Any:
        from kubernetes import client

        if self._client is None:
            self._client = self._make_client()
        return client.CustomObjectsApi(self._client)

    async def _get(self, name: str) -> dict[str, Any]:
        def fetch() -> Any:
            return self._api().get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self.timeout_s
            )

        found: dict[str, Any] = await self._call(f"read InferenceService {self.namespace}/{name}", fetch)
        return found

    async def _patch(self, name: str, change: Callable[[dict[str, Any]], Patch | None]) -> None:
        """Read, compute the patch, validate the result, send it with the read's resourceVersion."""
        for attempt in range(1, self.conflict_retries + 1):
            current = await self._get(name)
            patch = change(current)
            if patch is None:
                return
            resource_version = current.get("metadata", {}).get("resourceVersion")
            patch = merge_patch(patch, {"metadata": {"resourceVersion": resource_version}})
            problems = schema_problems(merge_patch(current, patch))
            if problems:
                raise PermanentError(
                    f"refusing to write an invalid InferenceService {name}: {'; '.join(problems)}"
                )
            try:
                await self._send(name, patch)
                return
            except Conflict:
                if attempt == self.conflict_retries:
                    raise

    async def _send(self, name: str, patch: Patch) -> None:
        def send() -> Any:
            return self._api().patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=self.timeout_s
            )

        await self._call(f"patch InferenceService {self.namespace}/{name}", send)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s + 1)
        except ApiException as e:
            raise _translate(what, e) from e
        except (TimeoutError, HTTPError, OSError) as e:
            raise AdapterUnavailable(f"Kubernetes API did not answer {what}: {e!r}") from e


def _stable_of(obj: dict[str, Any]) -> tuple[str, str]:
    notes = _stable_annotations(obj)
    return notes[STABLE_VERSION], notes[STABLE_URI]


def _translate(what: str, e: Any) -> Exception:
    reason = _status_message(e)
    if e.status == 404:
        return NotFound(f"{what}: not found ({reason}); the Helm chart or the model's owner creates it")
    if e.status == 409:
        return Conflict(f"{what}: changed concurrently ({reason})")
    if e.status in (401, 403):
        return PermanentError(f"{what}: not allowed ({reason}); check the Role (get/list/watch/patch)")
    if e.status in (400, 415, 422):
        return PermanentError(f"{what}: rejected ({reason})")
    return AdapterUnavailable(f"{what}: Kubernetes API answered {e.status} ({reason})")


def _status_message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message", e.reason))
    except (TypeError, ValueError):
        return str(e.reason)


def build(settings: Settings, policies: PolicyBook | None = None) -> KServeServing:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    if not settings.kserve_namespace:
        raise ConfigError("MLCD_KSERVE_NAMESPACE is not set; the embedded default is local serving")

    def api_client() -> Any:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return client.ApiClient()

    return KServeServing(api_client, settings.kserve_namespace, policies or PolicyBook(settings.policies_dir))
