"""The trainer's tuning decisions, free of I/O: whether a retrain is tuned, how experiments and Kubernetes
objects are named, what a tuned run records.

A tuned retrain first runs an experiment (Katib, or Optuna on the embedded default) whose trials train
with searched parameters; the best trial's parameters then train the candidate like any run.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from mlcd.policy.schema import SearchParameter, Tuning
from mlcd.ports import TuningResult

TAG_PREFIX = "mlcd.tuning."
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def should_tune(tuning: Tuning | None, previous_runs: int, last_candidate_missed: bool) -> bool:
    """Whether the model's next run is tuned, given how many runs it had and how its last candidate fared.

    A model's first run is tuned under every setting: there is nothing better to start from.
    """
    if tuning is None:
        return False
    if tuning.when == "always" or previous_runs == 0:
        return True
    if tuning.when == "every_nth":
        return previous_runs % tuning.every == 0
    return last_candidate_missed


def kube_name(run_name: str, prefix: str = "mlcd") -> str:
    """A Kubernetes name for the run's experiment or job: DNS-1123, at most 40 characters (Katib names
    trials after their experiment, and a trial's pods and services must stay within 63), the same on every
    retry, unique per run."""
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:12]
    readable = _NOT_DNS.sub("-", run_name.lower().removeprefix("mlcd-")).strip("-")[: 40 - len(prefix) - 14]
    return f"{prefix}-{readable.strip('-')}-{digest}" if readable.strip("-") else f"{prefix}-{digest}"


def trials_model(model: str) -> str:
    """The registered model trials' versions go to, apart from the model's own candidates."""
    return f"{model}-trials"


def typed(parameter: SearchParameter, value: Any) -> Any:
    """A searched value as the training run takes it (Katib hands every assignment back as a string)."""
    if parameter.type == "int":
        return int(float(value))
    if parameter.type == "double":
        return float(value)
    for option in parameter.values or []:
        if str(option) == str(value) or (parameter.type == "discrete" and float(option) == float(value)):
            return option
    return value


def typed_assignments(tuning: Tuning, assignments: dict[str, Any]) -> dict[str, Any]:
    """The best trial's assignments with the policy's types; names outside the search space are refused."""
    by_name = {p.name: p for p in tuning.parameters}
    unknown = sorted(set(assignments) - set(by_name))
    if unknown:
        raise ValueError(f"the experiment assigned parameters outside the search space: {', '.join(unknown)}")
    return {name: typed(by_name[name], value) for name, value in assignments.items()}


def tuned_parameters(policy_parameters: dict[str, Any], result: TuningResult | None) -> dict[str, Any]:
    """The policy's parameters, the best trial's assignments over them."""
    return {**policy_parameters, **(result.parameters if result is not None else {})}


def version_tags(result: TuningResult) -> dict[str, str]:
    """What the registered version keeps about the experiment that chose its parameters."""
    tags = {
        TAG_PREFIX + "experiment": result.name,
        TAG_PREFIX + "best_trial": result.best_trial,
        TAG_PREFIX + "trials": str(result.trials),
    }
    if result.objective_value is not None:
        tags[TAG_PREFIX + "objective_value"] = repr(result.objective_value)
    tags.update({TAG_PREFIX + "param." + k: str(v) for k, v in sorted(result.parameters.items())})
    return tags


def failure(result: TuningResult) -> str:
    return f"tuning experiment {result.name} failed: {result.message or 'no trial succeeded'}"
