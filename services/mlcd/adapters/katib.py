"""The Tuner port over Katib: one `Experiment` (kubeflow.org/v1beta1) per tuned retrain.

Each trial is a batch/v1 Job running mlcd's own image: `python -m mlcd.trainer.trial` submits one run of
the model's pipeline on Kubeflow Pipelines with the trial's parameters, waits for it and prints the run's
metrics as `name=value` lines, which Katib's StdOut metrics collector reads (the pattern Kale's Katib
integration uses). The experiment is named by the trainer from its run, so a retried start finds it.
Every Experiment is validated before it is sent against Katib's own OpenAPI schema (`v1beta1.Experiment`
from api/openapi-spec/swagger.json, Apache-2.0; Katib's CRD itself is schemaless), bundled as
katib_experiment_schema.json.gz with its SOURCE.md and LICENSE.

The `kubeflow-katib` SDK is not used: 0.19 pins protobuf<5, and kfp needs protobuf>=6.31.1 (through
kfp-pipeline-spec), so it cannot share the venv; the shared `kubernetes` client (adapters/kube.py) and the
bundled schema stand in for it.

Katib has no warm start (kubeflow/katib#1067): `training.tuning.warm_start` applies to Optuna only.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import asdict
from importlib import resources
from typing import Any

from mlcd.adapters import kube
from mlcd.adapters.kube import CustomObjects, Kind
from mlcd.config import Settings
from mlcd.errors import ConfigError, PermanentError
from mlcd.policy.schema import Tuning
from mlcd.ports import Tuner, TuningRequest, TuningResult

EXPERIMENT = Kind("kubeflow.org", "v1beta1", "experiments", "Experiment")
CONTAINER = "training"
TRIAL_NAME = "trialName"
# mlcd's algorithm names are Katib's (Katib's Optuna suggestion service serves tpe, multivariate-tpe,
# cmaes, random and grid; its skopt service bayesianoptimization).
ALGORITHMS = {
    name: name for name in ("random", "grid", "tpe", "multivariate-tpe", "cmaes", "bayesianoptimization")
}


@functools.cache
def _validator() -> Any:
    import jsonschema

    raw = resources.files("mlcd.adapters").joinpath("katib_experiment_schema.json.gz").read_bytes()
    return jsonschema.Draft7Validator(json.loads(gzip.decompress(raw)))


def schema_problems(obj: dict[str, Any]) -> list[str]:
    return kube.schema_problems(_validator(), obj)


def _space(parameter: Any) -> dict[str, Any]:
    if parameter.values is not None:
        return {"list": [str(v) for v in parameter.values]}
    space = {"min": _number(parameter.min, parameter.type), "max": _number(parameter.max, parameter.type)}
    if parameter.step is not None:
        space["step"] = _number(parameter.step, parameter.type)
    return space


def _number(value: float, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def experiment(request: TuningRequest, namespace: str, image: str, env: dict[str, str]) -> dict[str, Any]:
    """The Experiment for `request`: the policy's search, each trial one run of the model's pipeline."""
    tuning: Tuning = request.tuning
    objective: dict[str, Any] = {
        "type": tuning.objective.type,
        "objectiveMetricName": tuning.objective.metric,
        "additionalMetricNames": list(tuning.objective.additional_metrics),
    }
    if tuning.objective.goal is not None:
        objective["goal"] = tuning.objective.goal
    args = [
        "-m",
        "mlcd.trainer.trial",
        "--run-name",
        f"${{trialParameters.{TRIAL_NAME}}}",
        "--pipeline-ref",
        json.dumps(asdict(request.pipeline), sort_keys=True),
        "--parameters",
        json.dumps(request.parameters, sort_keys=True),
    ]
    for metric in [tuning.objective.metric, *tuning.objective.additional_metrics]:
        args += ["--metric", metric]
    for p in tuning.parameters:
        args += ["--set", f"{p.name}:{p.type}=${{trialParameters.{p.name}}}"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": ["python"],
                            "args": args,
                            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                        }
                    ],
                },
            },
        },
    }
    return {
        "apiVersion": EXPERIMENT.api_version,
        "kind": EXPERIMENT.kind,
        "metadata": {
            "name": request.name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "mlcd", "mlcd.dev/model": _label(request.model)},
        },
        "spec": {
            "objective": objective,
            "algorithm": {"algorithmName": ALGORITHMS[tuning.algorithm]},
            "parallelTrialCount": tuning.parallel_trials,
            "maxTrialCount": tuning.max_trials,
            "maxFailedTrialCount": tuning.max_failed_trials,
            "parameters": [
                {"name": p.name, "parameterType": p.type, "feasibleSpace": _space(p)}
                for p in tuning.parameters
            ],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "trialParameters": [
                    *({"name": p.name, "reference": p.name} for p in tuning.parameters),
                    {"name": TRIAL_NAME, "reference": "${trialSpec.Name}"},
                ],
                "trialSpec": job,
            },
        },
    }


def _label(value: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in value)[:63]
    return cleaned.strip("-_.") or "model"


def result_of(obj: dict[str, Any]) -> TuningResult:
    """Where an Experiment stands, from its status: conditions, currentOptimalTrial (its assignments as
    Katib writes them, strings), trial counts."""
    name = obj["metadata"]["name"]
    status = obj.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    optimal = status.get("currentOptimalTrial") or {}
    best = str(optimal.get("bestTrialName") or "")
    assignments = {a["name"]: a.get("value") for a in optimal.get("parameterAssignments") or []}
    spec_objective = (obj.get("spec") or {}).get("objective") or {}
    metric = spec_objective.get("objectiveMetricName", "")
    strategy = "max" if spec_objective.get("type") == "maximize" else "min"
    value = None
    for observed in (optimal.get("observation") or {}).get("metrics") or []:
        if observed.get("name") == metric:
            value = _float(observed.get(strategy, observed.get("latest")))
    trials = int(status.get("trials") or 0)
    if "Succeeded" in true:
        if not best:
            return TuningResult(
                name, "FAILED", trials=trials, message=str(true["Succeeded"].get("message", ""))
            )
        return TuningResult(
            name, "SUCCEEDED", best, assignments, value, trials, str(true["Succeeded"].get("message", ""))
        )
    if "Failed" in true:
        return TuningResult(
            name, "FAILED", best, trials=trials, message=str(true["Failed"].get("message", ""))
        )
    return TuningResult(name, "RUNNING", best, trials=trials)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class KatibTuner:
    def __init__(self, objects: CustomObjects, image: str, env: dict[str, str]) -> None:
        self.objects = objects
        self.image = image
        self.env = env

    async def start(self, request: TuningRequest) -> TuningResult:
        existing = await self.objects.get(EXPERIMENT, request.name)
        if existing is not None:
            return result_of(existing)
        obj = experiment(request, self.objects.namespace, self.image, self.env)
        problems = schema_problems(obj)
        if problems:
            raise PermanentError(
                f"refusing to create an invalid Experiment {request.name}: {'; '.join(problems)}"
            )
        return result_of(await self.objects.create(EXPERIMENT, obj))

    async def result(self, name: str) -> TuningResult | None:
        found = await self.objects.get(EXPERIMENT, name)
        return None if found is None else result_of(found)

    async def cancel(self, name: str) -> None:
        await self.objects.delete(EXPERIMENT, name, propagation="Foreground")  # its trials and pods first

    async def ping(self) -> None:
        await self.objects.ping(EXPERIMENT)


def build(settings: Settings) -> KatibTuner:
    """Katib in MLCD_KATIB_NAMESPACE; trial pods reach KFP and MLflow as mlcd does (no secret is passed)."""
    if not settings.katib_namespace:
        raise ConfigError("MLCD_KATIB_NAMESPACE is not set; the embedded default tunes with Optuna")
    env = {
        "MLCD_KFP_HOST": settings.kfp_host,
        "MLCD_KFP_NAMESPACE": settings.kfp_namespace,
        "MLCD_KFP_EXPERIMENT": settings.kfp_experiment,
        "MLCD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
    }
    return KatibTuner(
        CustomObjects(kube.api_client, settings.katib_namespace, settings.kube_timeout_s),
        settings.trial_image,
        {k: v for k, v in env.items() if v},
    )


def build_tuner(settings: Settings) -> Tuner:
    """Katib when MLCD_KATIB_NAMESPACE is set, else Optuna under MLCD_HOME with trials on the orchestrator
    that MLCD_KFP_HOST configures (the local runner when unset)."""
    if settings.katib_namespace:
        return build(settings)
    from mlcd.adapters import kfp, mlflow, optuna_tuner

    trial_env = {
        "MLCD_HOME": str(settings.home.resolve()),
        "MLCD_PIPELINES_DIR": str(settings.pipelines_dir.resolve()),
        "MLCD_MLFLOW_TRACKING_URI": mlflow.tracking_uri(settings),
        "MLCD_KFP_HOST": settings.kfp_host or "",
        "MLCD_KFP_NAMESPACE": settings.kfp_namespace or "",
        "MLCD_KFP_EXPERIMENT": settings.kfp_experiment or "",
        "MLCD_S3_ENDPOINT": settings.s3_endpoint or "",
    }
    return optuna_tuner.OptunaTuner(
        settings.home, {k: v for k, v in trial_env.items() if v}, kfp.s3_credentials(settings)
    )
