"""A Kubernetes API emulator for Katib and the Training Operators, and stand-ins for their controllers.

`KubeflowApi` stands in for kube-apiserver (kmock on loopback; its object store is tests/fakes/kube_api.py's)
for Katib `Experiment`s and `Trial`s (kubeflow.org/v1beta1), Training Operator `PyTorchJob`s, `TFJob`s,
`XGBoostJob`s (kubeflow.org/v1) and Kubeflow Trainer `TrainJob`s (trainer.kubeflow.org/v1alpha1): POST
(409 AlreadyExists), GET, LIST, DELETE. Every create is validated against the published schemas in
/work/shared/schemas (422 when invalid): Katib's generated OpenAPI `v1beta1.Experiment` (its CRD is
schemaless), the Training Operator's and Trainer's CRD `openAPIV3Schema`s. Status is written only by the
controllers.

`KatibController` does what Katib would, with real parts: Optuna suggests each trial's assignments (Katib's
suggestion service for tpe, multivariate-tpe, cmaes, random and grid is Optuna too); each Trial's
`trialSpec` gets its `${trialParameters.X}` filled the way Katib does (a reference to a search parameter, or
`${trialSpec.Name}`), and its primary container's command REALLY runs here as a process (`python` is this
venv's), with the container's env over the "node's" env; its stdout is read like Katib's StdOut metrics
collector (`name=value` lines). Trial and Experiment status follow Katib's: conditions Created, Running,
Succeeded/Failed, `currentOptimalTrial` (bestTrialName, parameterAssignments, observation min/max/latest),
trial counts. Deleting an Experiment stops its running trials (SIGTERM, as a deleted pod gets).

`JobController` runs a training job's primary container (PyTorchJob Master, TFJob Chief or Worker,
XGBoostJob Master, TrainJob `spec.trainer`) as a process and writes the operator's conditions: Created,
Running, then Succeeded (TrainJob: Complete) or Failed with the log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import jsonschema
import kmock

from tests.fakes.kube_api import ObjectStore, crd_openapi_schema, deleted, serving

SCHEMAS = Path("/work/shared/schemas")
KATIB = ("kubeflow.org", "v1beta1")
JOBS = {
    "pytorchjobs": (
        "kubeflow.org",
        "v1",
        "PyTorchJob",
        SCHEMAS / "training-operator/kubeflow.org_pytorchjobs.yaml",
    ),
    "tfjobs": ("kubeflow.org", "v1", "TFJob", SCHEMAS / "training-operator/kubeflow.org_tfjobs.yaml"),
    "xgboostjobs": (
        "kubeflow.org",
        "v1",
        "XGBoostJob",
        SCHEMAS / "training-operator/kubeflow.org_xgboostjobs.yaml",
    ),
    "trainjobs": (
        "trainer.kubeflow.org",
        "v1alpha1",
        "TrainJob",
        SCHEMAS / "trainer/trainer.kubeflow.org_trainjobs.yaml",
    ),
}
KINDS = {"experiments": "Experiment", "trials": "Trial", **{p: j[2] for p, j in JOBS.items()}}
_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")  # Katib's default StdOut filter


@functools.cache
def validator(plural: str) -> jsonschema.Draft7Validator | None:
    if plural == "experiments":
        spec = json.loads((SCHEMAS / "katib/swagger.json").read_text())
        schema = {"$ref": "#/components/schemas/v1beta1.Experiment", "components": spec["components"]}
        return jsonschema.Draft7Validator(schema)
    if plural in JOBS:
        return jsonschema.Draft7Validator(crd_openapi_schema(JOBS[plural][3], JOBS[plural][1]))
    return None  # Trial: written by the controller only


@dataclass
class KubeflowApi(ObjectStore[tuple[str, str, str, str]]):
    """The emulator's state; `url` is where the official client should point. Its `watch()` queues
    receive (verb, plural, namespace, name) after every create and delete; `writes` holds
    (verb, plural, name)."""

    kinds: dict[str, str] = field(default_factory=lambda: dict(KINDS))
    list_version: str = "1"
    url: str = ""

    # --- the HTTP side (GET and LIST: the store's) -------------------------------------------------

    async def create(self, request: kmock.Request) -> dict[str, Any]:
        plural, namespace = self.key(request)[0], request.namespace or ""
        body = dict(request.data)
        name = str((body.get("metadata") or {}).get("name", ""))
        self.vacant(plural, namespace, name)
        self.check(validator(plural), f"{KINDS[plural]} {name}", body)  # its status too, then dropped
        body.pop("status", None)
        body["metadata"] = {
            **body["metadata"],
            "namespace": namespace,
            "uid": f"uid-{self.version()}",
            "creationTimestamp": _now(),
            "resourceVersion": self.version(),
        }
        self.objects[(plural, namespace, name)] = body
        self.writes.append(("create", plural, name))
        self.notify(("create", plural, namespace, name))
        return body

    async def delete(self, request: kmock.Request) -> dict[str, Any]:
        plural, namespace, name = self.remove(request)
        self.notify(("delete", plural, namespace, name))
        return deleted(name)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.asynccontextmanager
async def api_running() -> AsyncIterator[KubeflowApi]:
    api = KubeflowApi()
    resources = [
        (*KATIB, "experiments"),
        (*KATIB, "trials"),
        *((g, v, p) for p, (g, v, _, _) in JOBS.items()),
    ]
    handlers: dict[kmock.action, kmock.Payload] = {
        kmock.action.FETCH: api.fetch,
        kmock.action.LIST: api.listing,
        kmock.action.CREATE: api.create,
        kmock.action.DELETE: api.delete,
    }
    async with serving(resources, handlers) as url:
        api.url = url
        yield api


# --- running a container here ---------------------------------------------------------------------


async def run_container(container: dict[str, Any], node_env: dict[str, str]) -> tuple[int, str]:
    """The container's command and args as a local process (`python` is this venv's); (exit code, output)."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = {**os.environ, **node_env, **{e["name"]: e.get("value", "") for e in container.get("env", [])}}
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = await process.communicate()
    except asyncio.CancelledError:  # the object was deleted: its pod gets SIGTERM, then time to stop
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    return int(process.returncode or 0), out.decode(errors="replace")


class _Controller:
    def __init__(self, api: KubeflowApi, node_env: dict[str, str]) -> None:
        self.api = api
        self.node_env = node_env
        self.hold = False  # objects are accepted and marked Running, never run
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._watching: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        queue = self.api.watch()
        self._watching = asyncio.create_task(self._watch(queue))
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in [self._watching, *self._tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, queue: asyncio.Queue[tuple[str, str, str, str]]) -> None:
        while True:
            verb, plural, namespace, name = await queue.get()
            key = (plural, namespace, name)
            if verb == "create" and self.handles(plural):
                self._tasks[key] = asyncio.create_task(self.reconcile(plural, namespace, name))
            elif verb == "delete" and key in self._tasks:
                task = self._tasks.pop(key)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def handles(self, plural: str) -> bool:
        raise NotImplementedError

    async def reconcile(self, plural: str, namespace: str, name: str) -> None:
        raise NotImplementedError


def _condition(kind: str, reason: str, message: str = "") -> dict[str, Any]:
    now = _now()
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }


# --- Katib ----------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    name: str
    assignments: dict[str, str]
    metrics: dict[str, float]
    succeeded: bool
    output: str


class KatibController(_Controller):
    def __init__(self, api: KubeflowApi, node_env: dict[str, str]) -> None:
        super().__init__(api, node_env)
        self.trials: dict[str, list[TrialRecord]] = {}

    def handles(self, plural: str) -> bool:
        return plural == "experiments"

    async def reconcile(self, plural: str, namespace: str, name: str) -> None:
        experiment = self.api.get(plural, namespace, name)
        assert experiment is not None
        spec = experiment["spec"]
        status: dict[str, Any] = {"conditions": [_condition("Created", "ExperimentCreated")], "trials": 0}
        self.api.write_status(plural, namespace, name, status)
        status["conditions"].append(_condition("Running", "ExperimentRunning"))
        self.api.write_status(plural, namespace, name, status)
        if self.hold:
            await asyncio.Event().wait()
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        objective = spec["objective"]
        metric, maximize = objective["objectiveMetricName"], objective.get("type") == "maximize"
        study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=_sampler(spec))
        space = {p["name"]: _distribution(p) for p in spec["parameters"]}
        records = self.trials.setdefault(name, [])
        succeeded = failed = 0
        max_trials, parallel = spec.get("maxTrialCount", 1), spec.get("parallelTrialCount", 3)
        while succeeded < max_trials and failed <= spec.get("maxFailedTrialCount", 3):
            asked = [study.ask(space) for _ in range(min(parallel, max_trials - succeeded))]
            numbered = [(t, f"{name}-{_suffix(name, t.number)}") for t in asked]
            results = await asyncio.gather(*(self._trial(experiment, n, t.params) for t, n in numbered))
            for (trial, _), record in zip(numbered, results, strict=True):
                records.append(record)
                if record.succeeded and metric in record.metrics:
                    study.tell(trial, record.metrics[metric])
                    succeeded += 1
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed += 1
            status.update(_optimal(records, spec, maximize))
            status.update(trials=len(records), trialsSucceeded=succeeded, trialsFailed=failed)
            self.api.write_status(plural, namespace, name, status)
            goal = objective.get("goal")
            best = status.get("currentOptimalTrial", {}).get("observation", {}).get("metrics", [])
            value = next((float(m["max" if maximize else "min"]) for m in best if m["name"] == metric), None)
            if goal is not None and value is not None and (value >= goal if maximize else value <= goal):
                status["conditions"].append(_condition("Succeeded", "ExperimentGoalReached"))
                self.api.write_status(plural, namespace, name, status)
                return
        if failed > spec.get("maxFailedTrialCount", 3):
            status["conditions"].append(
                _condition("Failed", "ExperimentMaxFailedTrialsReached", "too many failed trials")
            )
        else:
            status["conditions"].append(
                _condition("Succeeded", "ExperimentMaxTrialsReached", "max trials reached")
            )
        self.api.write_status(plural, namespace, name, status)

    async def _trial(self, experiment: dict[str, Any], name: str, params: dict[str, Any]) -> TrialRecord:
        spec = experiment["spec"]
        namespace = experiment["metadata"]["namespace"]
        template = spec["trialTemplate"]
        assignments = {k: _katib_value(v) for k, v in params.items()}
        values = {}
        for parameter in template.get("trialParameters", []):
            reference = parameter["reference"]
            values[parameter["name"]] = name if reference == "${trialSpec.Name}" else assignments[reference]
        run_spec = _fill(copy.deepcopy(template["trialSpec"]), values)
        run_spec.setdefault("metadata", {}).update(name=name, namespace=namespace)
        trial = {
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Trial",
            "metadata": {
                "name": name,
                "labels": {"katib.kubeflow.org/experiment": experiment["metadata"]["name"]},
            },
            "spec": {
                "objective": spec["objective"],
                "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
                "runSpec": run_spec,
                "primaryContainerName": template.get("primaryContainerName", ""),
            },
        }
        self.api.put("trials", namespace, trial)
        containers = run_spec["spec"]["template"]["spec"]["containers"]
        primary = next(c for c in containers if c["name"] == template.get("primaryContainerName"))
        code, output = await run_container(primary, self.node_env)
        names = [
            spec["objective"]["objectiveMetricName"],
            *spec["objective"].get("additionalMetricNames", []),
        ]
        metrics = {
            m.group(1): float(m.group(2))
            for m in _METRIC.finditer(output)
            if m.group(1) in names and m.group(2)
        }
        ok = code == 0 and names[0] in metrics
        self.api.write_status(
            "trials",
            namespace,
            name,
            {
                "conditions": [
                    _condition("Succeeded" if ok else "Failed", "TrialSucceeded" if ok else "TrialFailed")
                ],
                "observation": {
                    "metrics": [
                        {"name": k, "latest": str(v), "min": str(v), "max": str(v)}
                        for k, v in metrics.items()
                    ]
                },
            },
        )
        return TrialRecord(name, assignments, metrics, ok, output)


def _suffix(name: str, number: int) -> str:
    return f"{abs(hash((name, number))) % 10**8:08d}"


def _katib_value(value: Any) -> str:
    return str(value)


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(f"${{trialParameters.{key}}}", replacement)
        return value
    return value


def _distribution(parameter: dict[str, Any]) -> Any:
    import optuna.distributions as d

    space = parameter["feasibleSpace"]
    kind = parameter["parameterType"]
    if kind == "int":
        return d.IntDistribution(int(space["min"]), int(space["max"]), step=int(space.get("step", 1)))
    if kind == "double":
        step = float(space["step"]) if "step" in space else None
        return d.FloatDistribution(float(space["min"]), float(space["max"]), step=step)
    return d.CategoricalDistribution(space["list"])


def _sampler(spec: dict[str, Any]) -> Any:
    import optuna.samplers as s

    algorithm = spec["algorithm"]["algorithmName"]
    if algorithm == "grid":
        grid = {}
        for p in spec["parameters"]:
            space = p["feasibleSpace"]
            if "list" in space:
                grid[p["name"]] = space["list"]
            else:
                low, high, step = float(space["min"]), float(space["max"]), float(space.get("step", 1))
                points = [low + i * step for i in range(int((high - low) / step + 1e-9) + 1)]
                grid[p["name"]] = [int(x) for x in points] if p["parameterType"] == "int" else points

        class AskAndTellGrid(s.GridSampler):  # type: ignore[misc]
            def after_trial(self, *args: Any, **kwargs: Any) -> None:
                return None  # GridSampler would call study.stop(), which only works inside optimize()

        return AskAndTellGrid(grid, seed=7)
    if algorithm == "random":
        return s.RandomSampler(seed=7)
    if algorithm == "cmaes":
        return s.CmaEsSampler(seed=7)
    return s.TPESampler(seed=7, multivariate=algorithm == "multivariate-tpe")


def _optimal(records: list[TrialRecord], spec: dict[str, Any], maximize: bool) -> dict[str, Any]:
    metric = spec["objective"]["objectiveMetricName"]
    done = [r for r in records if r.succeeded]
    if not done:
        return {}
    best = (max if maximize else min)(done, key=lambda r: r.metrics[metric])
    return {
        "currentOptimalTrial": {
            "bestTrialName": best.name,
            "parameterAssignments": [{"name": k, "value": v} for k, v in best.assignments.items()],
            "observation": {
                "metrics": [
                    {"name": k, "latest": str(v), "min": str(v), "max": str(v)}
                    for k, v in best.metrics.items()
                ]
            },
        }
    }


# --- Training Operator and Trainer -----------------------------------------------------------------


_PRIMARY = {
    "pytorchjobs": ("pytorchReplicaSpecs", ["Master", "Worker"]),
    "tfjobs": ("tfReplicaSpecs", ["Chief", "Worker"]),
    "xgboostjobs": ("xgbReplicaSpecs", ["Master", "Worker"]),
}


def primary_container(plural: str, job: dict[str, Any]) -> dict[str, Any]:
    if plural == "trainjobs":
        trainer = job["spec"].get("trainer") or {}
        return {
            "name": "node",
            "command": trainer.get("command", []),
            "args": trainer.get("args", []),
            "env": trainer.get("env", []),
        }
    key, roles = _PRIMARY[plural]
    replicas = job["spec"][key]
    role = next(r for r in roles if r in replicas)
    return dict(replicas[role]["template"]["spec"]["containers"][0])


class JobController(_Controller):
    def handles(self, plural: str) -> bool:
        return plural in JOBS

    async def reconcile(self, plural: str, namespace: str, name: str) -> None:
        job = self.api.get(plural, namespace, name)
        assert job is not None
        conditions = [_condition("Created", "JobCreated", f"{KINDS[plural]} {name} is created.")]
        self.api.write_status(plural, namespace, name, {"conditions": conditions})
        if plural != "trainjobs":
            conditions.append(_condition("Running", "JobRunning", f"{KINDS[plural]} {name} is running."))
            self.api.write_status(plural, namespace, name, {"conditions": conditions})
        if self.hold:
            await asyncio.Event().wait()
        code, output = await run_container(primary_container(plural, job), self.node_env)
        if code == 0:
            done = "Complete" if plural == "trainjobs" else "Succeeded"
            conditions.append(
                _condition(done, "JobSucceeded", f"{KINDS[plural]} {name} successfully completed.")
            )
        else:
            conditions.append(_condition("Failed", "JobFailed", output[-2000:]))
        self.api.write_status(plural, namespace, name, {"conditions": conditions})
