"""The TrainingJobs port over the Kubeflow Training Operator (PyTorchJob, TFJob, XGBoostJob kubeflow.org/v1)
and Kubeflow Trainer (TrainJob trainer.kubeflow.org/v1alpha1).

A policy with `training.backend: job` gives a manifest template; mlcd names the job (from the run, so a
retried submit finds it: the create answers 409 and the existing job is read), puts it in
MLCD_TRAINING_NAMESPACE, fills `${parameters.NAME}` in its strings with the run's parameters, validates it
against the kind's CRD schema (bundled as training_job_schemas.json.gz: Training Operator v1.9.4 and
Trainer v2.3.0, Apache-2.0, see training_job_schemas.SOURCE.md) and creates it. The job's conditions say
where it stands: Created, Running (and Restarting), then Succeeded (TrainJob: Complete) or Failed. The job
registers its model version in MLflow itself, tagged `mlcd.run_name` = `${parameters.run_name}`, where the
trainer finds it as for a pipeline run. Terminating a job deletes it (foreground: its pods first).
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
from importlib import resources
from typing import Any

from mlcd.adapters import kube
from mlcd.adapters.kube import CustomObjects, Kind
from mlcd.config import Settings
from mlcd.errors import Conflict, NotFound, PermanentError
from mlcd.ports import Run

_PLACEHOLDER = re.compile(r"\$\{parameters\.([A-Za-z_][A-Za-z0-9_]*)\}")
_SUCCEEDED = {"Succeeded", "Complete"}  # Training Operator v1, Trainer v2 (TrainJob)


@functools.cache
def _schemas() -> dict[str, Any]:
    raw = resources.files("mlcd.adapters").joinpath("training_job_schemas.json.gz").read_bytes()
    loaded: dict[str, Any] = json.loads(gzip.decompress(raw))
    return loaded


def kinds() -> dict[str, Kind]:
    """The job kinds mlcd submits, by kind name."""
    return {name: Kind(s["group"], s["version"], s["plural"], name) for name, s in _schemas().items()}


@functools.cache
def _validator(kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(_schemas()[kind]["openAPIV3Schema"])


def kind_of(manifest: dict[str, Any]) -> Kind:
    kind = kinds().get(str(manifest.get("kind")))
    if kind is None or manifest.get("apiVersion") != kind.api_version:
        supported = ", ".join(f"{k.kind} ({k.api_version})" for k in kinds().values())
        raise PermanentError(
            f"training.job is {manifest.get('kind')} ({manifest.get('apiVersion')}); mlcd submits {supported}"
        )
    return kind


def render(template: dict[str, Any], name: str, namespace: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The job to create: the template named `name` in `namespace`, `${parameters.X}` filled in."""
    missing: set[str] = set()

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str):

            def one(match: re.Match[str]) -> str:
                if match.group(1) not in parameters:
                    missing.add(match.group(1))
                    return match.group(0)
                return str(parameters[match.group(1)])

            return _PLACEHOLDER.sub(one, value)
        return value

    job: dict[str, Any] = fill(copy.deepcopy(template))
    if missing:
        raise PermanentError(
            f"training.job refers to ${{parameters.{sorted(missing)[0]}}}, which the run does not have "
            f"(it has {', '.join(sorted(parameters))})"
        )
    metadata = job.setdefault("metadata", {})
    metadata.update(name=name, namespace=namespace)
    metadata.setdefault("labels", {})["app.kubernetes.io/managed-by"] = "mlcd"
    job.pop("status", None)
    return job


def schema_problems(job: dict[str, Any]) -> list[str]:
    return kube.schema_problems(_validator(kind_of(job).kind), job)


def run_of(kind: Kind, job: dict[str, Any]) -> Run:
    """The port's view of a job, from its true conditions: Failed, then Succeeded or Complete, Running."""
    name = job["metadata"]["name"]
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    types = {c.get("type"): c for c in conditions}
    run_id = f"{kind.plural}/{name}"
    failed = types.get("Failed")
    if failed is not None:
        message = str(failed.get("message") or failed.get("reason") or "")
        return Run(run_id, name, "FAILED", failed_task=kind.kind, log_tail=message)
    if _SUCCEEDED & set(types):
        return Run(run_id, name, "SUCCEEDED")
    if "Running" in types or "Restarting" in types:
        return Run(run_id, name, "RUNNING")
    return Run(run_id, name, "PENDING")


class TrainingJobRunner:
    def __init__(self, objects: CustomObjects) -> None:
        self.objects = objects

    async def submit_job(self, name: str, template: dict[str, Any], parameters: dict[str, Any]) -> Run:
        job = render(template, name, self.objects.namespace, parameters)
        kind = kind_of(job)
        problems = schema_problems(job)
        if problems:
            raise PermanentError(f"refusing to create an invalid {kind.kind} {name}: {'; '.join(problems)}")
        existing = await self.objects.get(kind, name)
        if existing is not None:
            return run_of(kind, existing)
        try:
            return run_of(kind, await self.objects.create(kind, job))
        except Conflict:  # created between the read and the create: by an earlier attempt
            found = await self.objects.get(kind, name)
            if found is None:
                raise
            return run_of(kind, found)

    async def get_run(self, run_id: str) -> Run:
        kind, name = self._split(run_id)
        found = await self.objects.get(kind, name)
        if found is None:
            raise NotFound(f"{kind.kind} {self.objects.namespace}/{name} is gone")
        return run_of(kind, found)

    async def terminate_run(self, run_id: str) -> None:
        kind, name = self._split(run_id)
        await self.objects.delete(kind, name, propagation="Foreground")  # its pods first

    def _split(self, run_id: str) -> tuple[Kind, str]:
        plural, _, name = run_id.partition("/")
        by_plural = {k.plural: k for k in kinds().values()}
        if plural not in by_plural or not name:
            raise PermanentError(f"{run_id!r} names no training job (<plural>/<name>)")
        return by_plural[plural], name


class NoTrainingJobs:
    """Without MLCD_TRAINING_NAMESPACE a job policy cannot run: every call says so."""

    async def submit_job(self, name: str, template: dict[str, Any], parameters: dict[str, Any]) -> Run:
        raise PermanentError(
            "training.backend job needs a Kubernetes namespace for its Training Operator jobs: set "
            "MLCD_TRAINING_NAMESPACE"
        )

    async def get_run(self, run_id: str) -> Run:
        raise NotFound(f"no training job {run_id}: MLCD_TRAINING_NAMESPACE is not set")

    async def terminate_run(self, run_id: str) -> None:
        return None


def build(settings: Settings) -> TrainingJobRunner | NoTrainingJobs:
    if not settings.training_namespace:
        return NoTrainingJobs()
    return TrainingJobRunner(
        CustomObjects(kube.api_client, settings.training_namespace, settings.kube_timeout_s)
    )
