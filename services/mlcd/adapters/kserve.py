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
import functools
import gzip
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from mlcd.adapters import kube
from mlcd.adapters.kube import merge_patch as merge_patch  # the rollout arithmetic's tests use it here
from mlcd.adapters.runtimes import flavor_problem
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, ArtifactUnreadable, ConfigError
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Predictor
from mlcd.ports import Flavors, ModelVersion, ServingState

INFERENCE_SERVICE = kube.Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
STABLE_VERSION = "mlcd.dev/stable-version"
STABLE_URI = "mlcd.dev/stable-uri"
CANARY_VERSION = "mlcd.dev/canary-version"
PREDICTOR_REVISION = "predictor"  # Standard mode: the main predictor's deployment, beside named canaries
Mode = Literal["serverless", "raw"]
Patch = dict[str, Any]


# --- the schema -----------------------------------------------------------------------------------


@functools.cache
def _validator() -> Any:
    import jsonschema

    raw = resources.files("mlcd.adapters").joinpath("kserve_inferenceservice_schema.json.gz").read_bytes()
    schema = json.loads(gzip.decompress(raw))["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def schema_problems(obj: dict[str, Any]) -> list[str]:
    """Why `obj` (status aside) is not a valid InferenceService; empty when it is."""
    return kube.schema_problems(_validator(), obj)


# --- what KServe's storage initializer can read ----------------------------------------------------

# The schemes kserve-storage's `Storage.download` reads a model folder from (its _GCS_PREFIX, _S3_PREFIX,
# _HDFS_PREFIX, _WEBHDFS_PREFIX, _OCI_PREFIX; pvc:// is mounted by KServe's webhook as /mnt/pvc).
_FOLDER_SCHEMES = ("s3://", "gs://", "hdfs://", "webhdfs://", "pvc://", "oci://")
_AZURE_BLOB = (
    re.compile(r"^https://(.+?)\.blob\.core\.windows\.net/(.+)"),
    re.compile(r"^https://(.+?)\.z[0-9]{1,2}\.blob\.storage\.azure\.net/(.+)"),
)
_ARTIFACT_ROOT_HINT = (
    "set the MLflow server's artifact root to S3 or GCS "
    "(mlflow server --default-artifact-root s3://bucket/path --no-serve-artifacts)"
)


def storage_problem(uri: str) -> str | None:
    """Why KServe's storage initializer cannot download a model folder from `uri`; None when it can."""
    if not uri:
        return "the model version has no artifact URI"
    if uri.startswith(_FOLDER_SCHEMES) or any(p.match(uri) for p in _AZURE_BLOB):
        return None
    if uri.startswith("mlflow-artifacts:"):
        return (
            f"{uri} is MLflow's proxied artifact scheme, which only the MLflow server reads; "
            f"KServe's storage initializer cannot download it: {_ARTIFACT_ROOT_HINT}"
        )
    if uri.startswith(("models:", "runs:")):
        return f"{uri} is an MLflow registry reference, not a storage location KServe can download"
    if uri.startswith(("http://", "https://")):
        return f"{uri}: KServe downloads a single file over HTTP, not a model folder; {_ARTIFACT_ROOT_HINT}"
    if uri.startswith(("file:", "/")):
        return f"{uri} is a path on the MLflow host, which KServe's pods cannot read; {_ARTIFACT_ROOT_HINT}"
    scheme = uri.split(":", 1)[0] if ":" in uri else uri
    return (
        f"{uri}: KServe's storage initializer does not read the {scheme!r} scheme "
        "(it reads s3://, gs://, hdfs://, webhdfs://, pvc://, oci:// and Azure Blob URLs)"
    )


def _readable(uri: str) -> str:
    problem = storage_problem(uri)
    if problem is not None:
        raise ArtifactUnreadable(f"KServe cannot load this model version: {problem}")
    return uri


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


def predictor_model(predictor: Predictor, uri: str) -> dict[str, Any]:
    """The predictor's `model` block: format, runtime and protocol from the policy, the version's URI."""
    model: dict[str, Any] = {"modelFormat": {"name": predictor.model_format}, "storageUri": uri}
    if predictor.runtime:
        model["runtime"] = predictor.runtime
    if predictor.protocol:
        model["protocolVersion"] = predictor.protocol
    return model


def canary_name(version: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"canary-v{version}".lower()).strip("-")[:63]


def canary_patch(
    obj: dict[str, Any], mode: Mode, version: str, uri: str, percent: int, predictor: Predictor
) -> Patch:
    metadata = {"annotations": {**_stable_annotations(obj), CANARY_VERSION: version}}
    if mode == "serverless":
        spec: Patch = {
            "predictor": {"canaryTrafficPercent": percent, "model": predictor_model(predictor, uri)}
        }
    else:
        base = {k: v for k, v in _predictor(obj).items() if k not in {"canaryTrafficPercent", "name"}}
        # The canary's model is a full container spec there, whose name the CRD requires.
        model = {**(base.get("model") or {}), "name": canary_name(version), **predictor_model(predictor, uri)}
        entry = {**base, "name": canary_name(version), "model": model}
        spec = {"canary": [{"predictor": entry, "trafficPercent": percent}]}
    return {"metadata": metadata, "spec": spec}


def stable_patch(obj: dict[str, Any], mode: Mode, version: str, uri: str, predictor: Predictor) -> Patch:
    """All traffic to `version` as the stable revision; any canary is dropped."""
    metadata = {"annotations": {STABLE_VERSION: version, STABLE_URI: uri, CANARY_VERSION: None}}
    block: Patch = {"model": predictor_model(predictor, uri)}
    spec: Patch = {"predictor": block}
    if mode == "serverless":
        block["canaryTrafficPercent"] = None
    if obj.get("spec", {}).get("canary") is not None:
        spec["canary"] = None
    return {"metadata": metadata, "spec": spec}


def traffic_back_patch(obj: dict[str, Any], mode: Mode) -> Patch | None:
    """First move of a rollback: no traffic to the canary, before the spec is restored."""
    if mode == "serverless" and _predictor(obj).get("canaryTrafficPercent") not in (None, 0):
        return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    if mode == "raw" and obj.get("spec", {}).get("canary"):
        return {"spec": {"canary": None}}
    return None


def restore_patch(obj: dict[str, Any], mode: Mode, version: str, uri: str, predictor: Predictor) -> Patch:
    """Second move of a Serverless rollback: the previous model as a new revision that gets no traffic.

    Knative sends 100 % to the latest *ready* revision once canaryTrafficPercent is gone; dropping it
    before the restored revision is Ready would route everything to the bad one. So the split stays at
    0 % for the latest revision (traffic on the previous rolled-out revision) until it is Ready.
    """
    patch = stable_patch(obj, mode, version, uri, predictor)
    if mode == "serverless":
        patch["spec"]["predictor"]["canaryTrafficPercent"] = 0
    return patch


def release_patch(obj: dict[str, Any]) -> Patch | None:
    """Last move of a Serverless rollback: the restored revision, now Ready, takes all traffic."""
    if _predictor(obj).get("canaryTrafficPercent") is None:
        return None
    return {"spec": {"predictor": {"canaryTrafficPercent": None}}}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
    return found


def _why_not(condition: dict[str, Any], kind: str) -> str:
    return str(condition.get("message") or condition.get("reason") or f"{kind} is not True")


def serving_state(model: str, obj: dict[str, Any], mode: Mode) -> ServingState:
    """What KServe reports for the current spec; `ready` only when its status is for this generation.

    Serverless: Ready, the latest created revision Ready, and the traffic split KServe reports.
    Standard (raw): Ready, and for a canary the CanaryReady condition and its canaryStatuses entry.
    """
    notes = _annotations(obj)
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    problems: list[str] = []
    generation, observed = obj.get("metadata", {}).get("generation"), status.get("observedGeneration")
    current = generation is None or observed == generation
    if not current:
        problems.append(f"generation {generation} not yet observed (status is for {observed})")
    ready_condition = _condition(status, "Ready")
    if ready_condition.get("status") != "True":
        problems.append(_why_not(ready_condition, "Ready"))
    traffic: dict[str, int] = {}
    canary_uri = ""
    observed_percent = 0
    canary_revision = stable_revision = ""
    if mode == "serverless":
        percent = _predictor(obj).get("canaryTrafficPercent")
        components = (status.get("components") or {}).get("predictor") or {}
        created, ready = components.get("latestCreatedRevision"), components.get("latestReadyRevision")
        if created and created != ready:
            problems.append(f"revision {created} is not ready (latest ready: {ready})")
        for entry in components.get("traffic") or []:
            name = str(entry.get("revisionName") or entry.get("tag") or "?")
            traffic[name] = traffic.get(name, 0) + int(entry.get("percent") or 0)
            if entry.get("latestRevision") and created and name == created == ready:
                observed_percent = int(entry.get("percent") or 0)
        stable_revision = str(components.get("latestRolledoutRevision") or ready or "")
        if percent is not None:
            canary_uri = _storage_uri(_predictor(obj))
            stable_uri = notes.get(STABLE_URI, "")
            canary_revision = str(created or "")
        else:
            stable_uri = _storage_uri(_predictor(obj))
    else:
        canaries = spec.get("canary") or []
        percent = canaries[0]["trafficPercent"] if canaries else None
        stable_uri = _storage_uri(_predictor(obj))
        stable_revision = PREDICTOR_REVISION
        if canaries:
            canary_uri = _storage_uri(canaries[0].get("predictor") or {})
            canary_revision = str((canaries[0].get("predictor") or {}).get("name") or "")
            canary_ready = _condition(status, "CanaryReady")
            if canary_ready.get("status") != "True":
                problems.append(_why_not(canary_ready, "CanaryReady"))
            wanted = (canaries[0].get("predictor") or {}).get("name")
            entry = next((e for e in status.get("canaryStatuses") or [] if e.get("name") == wanted), None)
            if entry is None or not entry.get("ready"):
                problems.append(f"canary {wanted} is not ready")
            else:
                observed_percent = int(entry.get("trafficPercent") or 0)
            traffic = {PREDICTOR_REVISION: 100 - observed_percent, str(wanted): observed_percent}
        elif current and not problems:
            traffic = {PREDICTOR_REVISION: 100}
    return ServingState(
        model=model,
        stable_version=notes.get(STABLE_VERSION) or None,
        canary_version=notes.get(CANARY_VERSION) if percent is not None else None,
        canary_percent=int(percent or 0),
        ready=not problems,
        message="; ".join(problems),
        observed_percent=observed_percent,
        stable_uri=stable_uri if current else "",
        canary_uri=canary_uri,
        traffic=traffic,
        canary_revision=canary_revision,
        stable_revision=stable_revision,
        platform=mode,
        namespace=str(obj.get("metadata", {}).get("namespace", "")),
        service=str(obj.get("metadata", {}).get("name", "")),
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
        observe_timeout_s: float = 120.0,
        poll_s: float = 0.2,
    ) -> None:
        """`api_client` returns a kubernetes.client.ApiClient (built lazily, in a worker thread).

        A rollback waits up to `observe_timeout_s` for KServe to report each of its moves.
        """
        self._kube = kube.CustomObjects(
            api_client,
            namespace,
            timeout_s=timeout_s,
            conflict_retries=conflict_retries,
            not_found_hint="; the Helm chart or the model's owner creates it",
            forbidden_hint="; check the Role (get/list/watch/patch)",
        )
        self.namespace = namespace
        self.policies = policies
        self.observe_timeout_s = observe_timeout_s
        self.poll_s = poll_s

    def _target(self, model: str) -> tuple[str, Mode, Predictor]:
        policy = self.policies.get(model)
        if policy is None:
            return model, "serverless", Predictor()
        return policy.serving_name or model, policy.rollout.mode, policy.rollout.predictor

    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        """Where the files are (kserve-storage must read them), then the flavor the predictor's runtime
        needs (MLServer's mlflow runtime a pyfunc model, the sklearn runtime an sklearn one, …)."""
        _, _, predictor = self._target(version.model)
        return storage_problem(version.serving_uri) or flavor_problem(
            predictor.model_format, version.version, flavors
        )

    async def state(self, model: str) -> ServingState:
        name, mode, _ = self._target(model)
        return serving_state(model, await self._get(name), mode)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        name, mode, predictor = self._target(model)
        uri = _readable(artifact_uri)
        await self._patch(name, lambda obj: canary_patch(obj, mode, version, uri, percent, predictor))

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        name, mode, predictor = self._target(model)
        uri = _readable(artifact_uri)
        await self._patch(name, lambda obj: stable_patch(obj, mode, version, uri, predictor))

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        """Traffic off the canary first, seen in KServe's status, then the previous spec back.

        At no moment does the spec ask for more traffic to the rolled-back revision than it had; in
        Serverless mode the restored model takes traffic only once its revision is Ready.
        """
        name, mode, predictor = self._target(model)
        await self._patch(name, lambda obj: traffic_back_patch(obj, mode))
        await self._observe(model, name, mode, lambda s: s.canary_version is None or s.serving_percent == 0)
        if version is None or artifact_uri is None:
            version, artifact_uri = _stable_of(await self._get(name))
        uri = _readable(artifact_uri)
        target = version
        await self._patch(name, lambda obj: restore_patch(obj, mode, target, uri, predictor))
        if mode == "serverless":
            await self._observe(model, name, mode, lambda s: s.ready)
            await self._patch(name, release_patch)
        await self._observe(model, name, mode, lambda s: s.ready and s.canary_version is None)

    async def _observe(
        self, model: str, name: str, mode: Mode, done: Callable[[ServingState], bool]
    ) -> ServingState:
        deadline = asyncio.get_running_loop().time() + self.observe_timeout_s
        while True:
            state = serving_state(model, await self._get(name), mode)
            if done(state):
                return state
            if asyncio.get_running_loop().time() >= deadline:
                raise AdapterUnavailable(
                    f"KServe did not report InferenceService {self.namespace}/{name} settled within "
                    f"{self.observe_timeout_s:g}s: {state.message or state.traffic}"
                )
            await asyncio.sleep(self.poll_s)

    async def ping(self) -> None:
        await self._kube.ping(INFERENCE_SERVICE, "InferenceServices")

    async def _get(self, name: str) -> dict[str, Any]:
        return await self._kube.read(INFERENCE_SERVICE, name)

    async def _patch(self, name: str, change: Callable[[dict[str, Any]], Patch | None]) -> None:
        await self._kube.patch(INFERENCE_SERVICE, name, change, schema_problems)


def _stable_of(obj: dict[str, Any]) -> tuple[str, str]:
    notes = _stable_annotations(obj)
    return notes[STABLE_VERSION], notes[STABLE_URI]


def build(settings: Settings, policies: PolicyBook | None = None) -> KServeServing:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    if not settings.kserve_namespace:
        raise ConfigError("MLCD_KSERVE_NAMESPACE is not set; the embedded default is local serving")
    return KServeServing(
        kube.api_client, settings.kserve_namespace, policies or PolicyBook(settings.policies_dir)
    )
