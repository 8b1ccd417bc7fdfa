"""The Serving port over Seldon Core 2 `Model` and `Experiment` resources (`mlops.seldon.io/v1alpha1`).

Users call one Model by name, the *endpoint* (the policy's `serving_name`, else the model name), which
the Helm chart or the model's owner creates; it serves the stable version. A canary step creates one
Model per candidate version (`<endpoint>-v<version>`, its spec copied from the endpoint's but for the
storage URI) and an Experiment `mlcd-<endpoint>` whose `default` is the endpoint and whose candidates are
the endpoint and the candidate, weighted by the step's percentage. A 0 % step is a shadow step: the
candidate is the Experiment's `mirror` and answers no one. Promotion points the endpoint Model at the new
version's files, then stops the Experiment and deletes the candidate Model once the endpoint reports the
new version Ready; a rollback stops the Experiment first, then restores the endpoint if it had moved.

Seldon Core 2 (v2.6.0 to today) writes no `observedGeneration` into a Model's or Experiment's status, so
a Ready condition may still be the previous spec's. After changing the endpoint's spec mlcd notes the
time (annotation `mlcd.dev/spec-written-at`) and counts the endpoint Ready only once its Ready condition
turned True at or after it. Every write carries the resourceVersion it was computed from (409: re-read
and retry, then Conflict) and is validated first against the CRDs' openAPIV3Schema (Seldon Core 2
v2.6.0, Apache License 2.0: seldon_schemas.json.gz, see seldon_schemas.SOURCE.md) and, for an
Experiment, against the rules Seldon's scheduler applies (scheduler/pkg/store/experiment/validate.go).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import httpx

from mlcd.adapters import kube, trace_headers
from mlcd.adapters.runtimes import flavor_problem
from mlcd.config import Settings
from mlcd.errors import (
    AdapterUnavailable,
    ArtifactUnreadable,
    ConfigError,
    Conflict,
    NotFound,
    PermanentError,
)
from mlcd.policy import analysis
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Check, Policy
from mlcd.ports import Analysis, Flavors, ModelVersion, ServingState

GROUP = "mlops.seldon.io"
VERSION = "v1alpha1"
MODELS = kube.Kind(GROUP, VERSION, "models", "Model")
EXPERIMENTS = kube.Kind(GROUP, VERSION, "experiments", "Experiment")
STABLE_VERSION = "mlcd.dev/stable-version"
WRITTEN_AT = "mlcd.dev/spec-written-at"
CANDIDATE_VERSION = "mlcd.dev/version"
CANDIDATE_OF = "mlcd.dev/candidate-of"
PLATFORM = "seldon"
Patch = dict[str, Any]

# --- the schemas and Seldon's own rules -----------------------------------------------------------


@functools.cache
def _validators() -> dict[str, Any]:
    import jsonschema

    raw = resources.files("mlcd.adapters").joinpath("seldon_schemas.json.gz").read_bytes()
    return {kind: jsonschema.Draft7Validator(s) for kind, s in json.loads(gzip.decompress(raw)).items()}


def schema_problems(kind: str, obj: dict[str, Any]) -> list[str]:
    """Why `obj` (status aside) is not a valid Seldon `kind` (Model or Experiment); empty when it is."""
    return kube.schema_problems(_validators()[kind], obj)


def experiment_problems(spec: dict[str, Any]) -> list[str]:
    """What Seldon's scheduler refuses in an Experiment the CRD schema lets through."""
    candidates = [c.get("name") for c in spec.get("candidates") or []]
    mirror = (spec.get("mirror") or {}).get("name")
    problems = []
    if not candidates and mirror is None:
        problems.append("an experiment needs candidates or a mirror")
    if spec.get("default") is not None and spec["default"] not in candidates:
        problems.append(f"default {spec['default']} is not one of the candidates")
    named = [*candidates, *([mirror] if mirror else [])]
    if len(named) != len(set(named)):
        problems.append("a model appears twice among the candidates and the mirror")
    if candidates and sum(int(c.get("weight") or 0) for c in spec["candidates"]) <= 0:
        problems.append("the candidates' weights add up to 0")
    return problems


# --- where Seldon's agent can download from --------------------------------------------------------


def storage_problem(uri: str) -> str | None:
    """Why a Seldon agent (rclone) cannot copy a model folder from `uri`; None when it can.

    The agent hands the URI to rclone, whose remote is the part before the first ':' (s3, gs, az, …,
    configured by Seldon's storage secret); MLflow's own schemes and host paths are no such remote.
    """
    if not uri:
        return "the model version has no artifact URI"
    hint = (
        "set the MLflow server's artifact root to S3 or GCS "
        "(--default-artifact-root s3://… --no-serve-artifacts)"
    )
    if uri.startswith("mlflow-artifacts:"):
        return f"{uri} is MLflow's proxied artifact scheme, which only the MLflow server reads: {hint}"
    if uri.startswith(("models:", "runs:")):
        return f"{uri} is an MLflow registry reference, not a storage location Seldon can copy from"
    if uri.startswith(("file:", "/")) or ":" not in uri or uri.index(":") == 0:
        return f"{uri} is not an rclone remote path (remote:path) that Seldon's agent can copy: {hint}"
    return None


def _readable(uri: str) -> str:
    problem = storage_problem(uri)
    if problem is not None:
        raise ArtifactUnreadable(f"Seldon cannot load this model version: {problem}")
    return uri


# --- names and objects, as plain functions ---------------------------------------------------------


def candidate_name(endpoint: str, version: str) -> str:
    """The candidate Model's name: a DNS label, like every Kubernetes object name."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{endpoint}-v{version}".lower()).strip("-")[:63].rstrip("-")


def experiment_name(endpoint: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"mlcd-{endpoint}".lower())[:63].rstrip("-")


def _annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _uri(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("spec") or {}).get("storageUri", ""))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def candidate_model(endpoint: dict[str, Any], name: str, version: str, uri: str) -> dict[str, Any]:
    """A Model for the candidate version: the endpoint's spec (server, requirements, memory, secret …)
    with the version's files, so it lands on a server that can load what the endpoint loads."""
    spec = {k: v for k, v in (endpoint.get("spec") or {}).items() if k not in {"artifactVersion"}}
    metadata = endpoint.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {
            "name": name,
            "namespace": metadata.get("namespace", ""),
            "labels": {CANDIDATE_OF: str(metadata.get("name", ""))},
            "annotations": {CANDIDATE_VERSION: version},
        },
        "spec": {**spec, "storageUri": uri},
    }


def experiment_spec(endpoint: str, candidate: str, percent: int) -> dict[str, Any]:
    """The endpoint's traffic split: `percent` to the candidate; 0 mirrors every request to it."""
    if percent <= 0:
        return {
            "default": endpoint,
            "candidates": [{"name": endpoint, "weight": 100}],
            "mirror": {"name": candidate, "percent": 100},
            "resourceType": "model",
        }
    return {
        "default": endpoint,
        "candidates": [
            {"name": endpoint, "weight": 100 - percent},
            {"name": candidate, "weight": percent},
        ],
        "resourceType": "model",
    }


def _experiment_candidate(experiment: dict[str, Any] | None, endpoint: str) -> tuple[str | None, int]:
    """The Model under test in an Experiment and its share of the endpoint's traffic (0: mirrored)."""
    spec = (experiment or {}).get("spec") or {}
    mirror = spec.get("mirror")
    if mirror:
        return str(mirror["name"]), 0
    candidates = spec.get("candidates") or []
    total = sum(int(c.get("weight") or 0) for c in candidates)
    for entry in candidates:
        if entry.get("name") != endpoint:
            share = round(100 * int(entry.get("weight") or 0) / total) if total else 0
            return str(entry["name"]), share
    return None, 0


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    found: dict[str, Any] = next((c for c in conditions if c.get("type") == kind), {})
    return found


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def model_ready(obj: dict[str, Any] | None, what: str) -> str | None:
    """Why the Model does not serve its current spec (None: it does).

    Ready must be True, and, when mlcd changed the spec, have turned True at or after that write (the
    status carries no observedGeneration: an older True may be the previous spec's).
    """
    if obj is None:
        return f"{what} does not exist"
    ready = _condition(obj, "Ready")
    if ready.get("status") != "True":
        model = _condition(obj, "ModelReady")
        why = model.get("message") or model.get("reason") or ready.get("reason") or "not Ready yet"
        return f"{what} is not Ready: {why}"
    written, since = _time(_annotations(obj).get(WRITTEN_AT)), _time(ready.get("lastTransitionTime"))
    if written is not None and (since is None or since < written):
        return f"{what} has not reported Ready since its spec changed at {_annotations(obj)[WRITTEN_AT]}"
    return None


def experiment_ready(obj: dict[str, Any]) -> str | None:
    """Why the Experiment is not active (None: it is): ExperimentReady, CandidatesReady, MirrorReady."""
    for kind in ("ExperimentReady", "CandidatesReady", "MirrorReady"):
        condition = _condition(obj, kind)
        if condition.get("status") != "True":
            why = condition.get("message") or condition.get("reason") or "not reported yet"
            return f"experiment {obj['metadata']['name']}: {kind} is not True ({why})"
    return None


def serving_state(
    model: str,
    endpoint: dict[str, Any],
    experiment: dict[str, Any] | None,
    candidate: dict[str, Any] | None,
) -> ServingState:
    """What Seldon reports: the endpoint's stable version, and the Experiment's split once it is active."""
    metadata = endpoint.get("metadata") or {}
    name = str(metadata.get("name", ""))
    problems = [p for p in [model_ready(endpoint, f"model {name}")] if p]
    stable_current = not problems
    canary_name, percent = _experiment_candidate(experiment, name)
    observed = 0
    traffic = {name: 100} if stable_current else {}
    if experiment is not None and canary_name is not None:
        experiment_problem = experiment_ready(experiment)
        candidate_problem = model_ready(candidate, f"model {canary_name}")
        problems += [p for p in (experiment_problem, candidate_problem) if p]
        if experiment_problem is None and candidate_problem is None:
            observed = percent
            traffic = {name: 100 - percent, canary_name: percent}
    canary_version = _annotations(candidate).get(CANDIDATE_VERSION) if experiment is not None else None
    return ServingState(
        model=model,
        stable_version=_annotations(endpoint).get(STABLE_VERSION) or None,
        canary_version=canary_version,
        canary_percent=percent if canary_version else 0,
        ready=not problems,
        message="; ".join(problems),
        observed_percent=observed,
        stable_uri=_uri(endpoint) if stable_current else "",
        canary_uri=_uri(candidate) if experiment is not None else "",
        traffic=traffic,
        canary_revision=canary_name or "",
        stable_revision=name,
        platform=PLATFORM,
        namespace=str(metadata.get("namespace", "")),
        service=name,
    )


# --- the adapter ----------------------------------------------------------------------------------


class SeldonServing:
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

        Promotion and rollback wait up to `observe_timeout_s` for Seldon to report each move.
        """
        self._kube = kube.CustomObjects(
            api_client,
            namespace,
            timeout_s=timeout_s,
            conflict_retries=conflict_retries,
            forbidden_hint=(
                "; mlcd's Role needs get/list/watch/create/patch/delete on mlops.seldon.io models and "
                "experiments"
            ),
        )
        self.namespace = namespace
        self.policies = policies
        self.observe_timeout_s = observe_timeout_s
        self.poll_s = poll_s

    def _policy(self, model: str) -> Policy:
        return self.policies.get(model) or Policy(model=model)

    def endpoint(self, model: str) -> str:
        return self._policy(model).serving_name or model

    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        """Where the files are (Seldon's agent copies them with rclone), then the MLflow flavor the
        policy's format needs (Seldon serves MLflow models with MLServer, as KServe does)."""
        predictor = self._policy(version.model).rollout.predictor
        return storage_problem(version.serving_uri) or flavor_problem(
            predictor.model_format, version.version, flavors
        )

    async def state(self, model: str) -> ServingState:
        endpoint = self.endpoint(model)
        current = await self._get(MODELS, endpoint)
        if current is None:
            raise NotFound(
                f"Seldon Model {self.namespace}/{endpoint} not found; the Helm chart or the model's owner "
                "creates it"
            )
        experiment = await self._get(EXPERIMENTS, experiment_name(endpoint))
        name, _ = _experiment_candidate(experiment, endpoint)
        candidate = await self._get(MODELS, name) if name else None
        return serving_state(model, current, experiment, candidate)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        """The candidate Model (created once), then the Experiment's split; 0 % mirrors (shadow)."""
        endpoint = self.endpoint(model)
        uri = _readable(artifact_uri)
        current = await self._require(endpoint)
        name = candidate_name(endpoint, version)
        await self._ensure_candidate(current, name, version, uri)
        previous = await self._get(EXPERIMENTS, experiment_name(endpoint))
        replaced, _ = _experiment_candidate(previous, endpoint)
        await self._apply_experiment(endpoint, version, experiment_spec(endpoint, name, percent))
        if replaced is not None and replaced != name:
            await self._delete(MODELS, replaced)  # a superseded candidate serves nobody now

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        """The endpoint Model on the version's files; once Seldon reports it Ready with them, the
        Experiment stops and the candidate Model goes (until then the split keeps serving)."""
        endpoint = self.endpoint(model)
        uri = _readable(artifact_uri)
        await self._point_endpoint(endpoint, version, uri)
        experiment = await self._get(EXPERIMENTS, experiment_name(endpoint))
        if experiment is None:
            return
        await self._observe(model, lambda s: s.stable_uri == uri, "the endpoint serving the new version")
        await self._stop_experiment(model, endpoint, experiment)

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        """Stop the Experiment (all traffic back on the endpoint), then restore the endpoint if it had
        moved, then drop the candidate Model."""
        endpoint = self.endpoint(model)
        experiment = await self._get(EXPERIMENTS, experiment_name(endpoint))
        if experiment is not None:
            await self._stop_experiment(model, endpoint, experiment)
        if version is None or artifact_uri is None:
            current = await self._require(endpoint)
            version, artifact_uri = _annotations(current).get(STABLE_VERSION, ""), _uri(current)
        uri = _readable(artifact_uri)
        await self._point_endpoint(endpoint, version, uri)
        await self._observe(
            model, lambda s: s.ready and s.canary_version is None and s.stable_uri == uri, "the rollback"
        )

    async def ping(self) -> None:
        await self._kube.ping(MODELS, "Seldon Models")

    # --- moves ------------------------------------------------------------------------------------

    async def _ensure_candidate(self, endpoint: dict[str, Any], name: str, version: str, uri: str) -> None:
        existing = await self._get(MODELS, name)
        if existing is None:
            await self._create(MODELS, candidate_model(endpoint, name, version, uri))
        elif _uri(existing) != uri or _annotations(existing).get(CANDIDATE_VERSION) != version:
            # A left-over Model of that name on other files: its Ready is the old files' until it turns again.
            notes = {CANDIDATE_VERSION: version, WRITTEN_AT: _now()}
            await self._patch(
                MODELS, name, lambda _: {"metadata": {"annotations": notes}, "spec": {"storageUri": uri}}
            )

    async def _apply_experiment(self, endpoint: str, version: str, spec: dict[str, Any]) -> None:
        problems = experiment_problems(spec)
        if problems:
            raise PermanentError(f"refusing an Experiment Seldon would reject: {'; '.join(problems)}")
        name = experiment_name(endpoint)
        if await self._get(EXPERIMENTS, name) is None:
            await self._create(
                EXPERIMENTS,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Experiment",
                    "metadata": {
                        "name": name,
                        "namespace": self.namespace,
                        "labels": {CANDIDATE_OF: endpoint},
                    },
                    "spec": spec,
                },
            )
            return

        def change(current: dict[str, Any]) -> Patch | None:
            old = current.get("spec") or {}
            if old == spec:
                return None
            # A merge patch replaces lists whole; the key a shadow step had (mirror) must be nulled.
            return {"spec": {**{k: None for k in old if k not in spec}, **spec}}

        await self._patch(EXPERIMENTS, name, change)

    async def _point_endpoint(self, endpoint: str, version: str, uri: str) -> None:
        def change(current: dict[str, Any]) -> Patch | None:
            notes = _annotations(current)
            if _uri(current) == uri:
                if notes.get(STABLE_VERSION) == version:
                    return None
                return {"metadata": {"annotations": {STABLE_VERSION: version}}}
            return {
                "metadata": {"annotations": {STABLE_VERSION: version, WRITTEN_AT: _now()}},
                "spec": {"storageUri": uri},
            }

        await self._patch(MODELS, endpoint, change)

    async def _stop_experiment(self, model: str, endpoint: str, experiment: dict[str, Any]) -> None:
        name, _ = _experiment_candidate(experiment, endpoint)
        await self._delete(EXPERIMENTS, experiment_name(endpoint))
        await self._observe(model, lambda s: s.canary_version is None, "the experiment stopping")
        if name is not None and name != endpoint:
            await self._delete(MODELS, name)

    async def _observe(self, model: str, done: Callable[[ServingState], bool], what: str) -> ServingState:
        deadline = asyncio.get_running_loop().time() + self.observe_timeout_s
        while True:
            state = await self.state(model)
            if done(state):
                return state
            if asyncio.get_running_loop().time() >= deadline:
                raise AdapterUnavailable(
                    f"Seldon did not report {what} for model {self.namespace}/{self.endpoint(model)} "
                    f"within {self.observe_timeout_s:g}s: {state.message or state.traffic}"
                )
            await asyncio.sleep(self.poll_s)

    # --- the Kubernetes API -----------------------------------------------------------------------

    async def _require(self, name: str) -> dict[str, Any]:
        found = await self._get(MODELS, name)
        if found is None:
            raise NotFound(
                f"Seldon Model {self.namespace}/{name} not found; "
                "the Helm chart or the model's owner creates it"
            )
        return found

    async def _get(self, kind: kube.Kind, name: str) -> dict[str, Any] | None:
        return await self._kube.get(kind, name)

    async def _create(self, kind: kube.Kind, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        problems = schema_problems(kind.kind, obj)
        if problems:
            raise PermanentError(f"refusing to write an invalid {kind.kind} {name}: {'; '.join(problems)}")
        try:
            await self._kube.create(kind, obj)
        except Conflict:
            pass  # created meanwhile (a second deployer replica, or a retry after a lost answer)

    async def _patch(
        self, kind: kube.Kind, name: str, change: Callable[[dict[str, Any]], Patch | None]
    ) -> None:
        await self._kube.patch(kind, name, change, functools.partial(schema_problems, kind.kind))

    async def _delete(self, kind: kube.Kind, name: str) -> None:
        await self._kube.delete(kind, name)  # gone already is what a delete wants


# --- analysis: Seldon's metrics from Prometheus, and the prediction-agreement probe -------------------


class SeldonAnalysis:
    """The Analysis port for Seldon: PromQL checks go to Prometheus; `prediction-agreement` sends the
    policy's probe request to the champion's and the candidate's own Models and compares their outputs.

    Seldon drops the mirror's answers (Envoy request mirroring), so agreement cannot be read off the
    mirrored traffic; the probe goes through Seldon's inference endpoint (`seldon-model` header), as a
    user's request would.
    """

    def __init__(
        self,
        prometheus: Analysis,
        inference_url: str | None,
        policies: PolicyBook,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self.prometheus = prometheus
        self.inference_url = inference_url.rstrip("/") if inference_url else None
        self.policies = policies
        self.timeout_s = timeout_s

    async def measure(self, model: str, version: str, window_s: float) -> dict[str, float]:
        return await self.prometheus.measure(model, version, window_s)

    async def evaluate(
        self, checks: list[Check], platform: analysis.Platform, target: analysis.Target
    ) -> list[analysis.Outcome]:
        probed = [c for c in checks if c.template == "prediction-agreement"]
        queried = [c for c in checks if c.template != "prediction-agreement"]
        found = (
            {o.name: o for o in await self.prometheus.evaluate(queried, platform, target)} if queried else {}
        )
        for check in probed:
            found[check.name] = await self._agreement(check, target)
        return [found[c.name] for c in checks]

    async def _agreement(self, check: Check, target: analysis.Target) -> analysis.Outcome:
        policy = self.policies.get(target.model)
        probe = policy.rollout.probe if policy is not None else None
        if self.inference_url is None or not probe:
            missing = "MLCD_SELDON_INFERENCE_URL" if self.inference_url is None else "rollout.probe"
            return analysis.Outcome(check.name, None, None, f"{check.name}: needs {missing}")
        async with httpx.AsyncClient(
            event_hooks=trace_headers.HTTPX_HOOKS, base_url=self.inference_url, timeout=self.timeout_s
        ) as client:
            champion = await self._infer(client, target.service, probe)
            candidate = await self._infer(client, target.revision, probe)
        if isinstance(champion, str):
            return analysis.Outcome(check.name, None, None, f"{check.name}: champion {champion}")
        if isinstance(candidate, str):
            return analysis.Outcome(check.name, 0.0, False, f"{check.name}: candidate {candidate}")
        return analysis.judge(check, agreement(champion, candidate))

    async def _infer(
        self, client: httpx.AsyncClient, model: str, probe: dict[str, Any]
    ) -> dict[str, Any] | str:
        """The model's answer, or why there is none (a string)."""
        try:
            answer = await client.post(
                f"/v2/models/{model}/infer", json=probe, headers={"seldon-model": model}
            )
        except httpx.HTTPError as e:
            raise AdapterUnavailable(
                f"Seldon's inference endpoint {self.inference_url} did not answer: {e!r}"
            ) from e
        if answer.status_code != 200:
            return f"{model} answered {answer.status_code}: {answer.text[:200]}"
        body: dict[str, Any] = answer.json()
        return body


def agreement(champion: dict[str, Any], candidate: dict[str, Any]) -> float:
    """The share of the probe's rows on which every output of the two answers is equal (numbers within
    a relative 1e-6); an output one answer lacks disagrees on every row."""
    rows_seen: list[int] = []
    disagreeing: set[int] = set()
    theirs = {o.get("name"): o for o in candidate.get("outputs") or []}
    for ours in champion.get("outputs") or []:
        mine_rows = _rows(ours)
        rows_seen.append(len(mine_rows))
        other = theirs.get(ours.get("name"))
        other_rows = _rows(other) if other is not None else []
        for index, row in enumerate(mine_rows):
            if index >= len(other_rows) or not _same(row, other_rows[index]):
                disagreeing.add(index)
    rows = max(rows_seen, default=0)
    return 1.0 - len(disagreeing) / rows if rows else math.nan


def _rows(output: dict[str, Any]) -> list[list[Any]]:
    data = output.get("data") or []
    flat: list[Any] = list(_flatten(data))
    shape = [int(d) for d in output.get("shape") or [len(flat)]]
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    width = max(width, 1)
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, int | float) and isinstance(y, int | float):
            if not math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def build(settings: Settings, policies: PolicyBook | None = None) -> SeldonServing:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    if not settings.seldon_namespace:
        raise ConfigError("MLCD_SELDON_NAMESPACE is not set; Seldon rollouts need the Models' namespace")
    return SeldonServing(
        kube.api_client, settings.seldon_namespace, policies or PolicyBook(settings.policies_dir)
    )
