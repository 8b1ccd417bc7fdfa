"""Tuning and training-job decisions without I/O: when to tune, names, the Experiment and job mlcd writes
(checked against Katib's and the Training Operator's published schemas), how their status reads."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from mlcd.adapters import katib, training_jobs
from mlcd.errors import PermanentError
from mlcd.policy.schema import Training, Tuning
from mlcd.ports import PipelineRef, TuningRequest
from mlcd.trainer import trial, tuning

SHARED = Path("/work/shared/schemas")


def a_tuning(**fields: Any) -> Tuning:
    return Tuning.model_validate(
        {
            "objective": {"metric": "accuracy", "goal": 0.99},
            "parameters": [
                {"name": "n_estimators", "type": "int", "min": 10, "max": 200, "step": 10},
                {"name": "test_fraction", "type": "double", "min": 0.2, "max": 0.3},
                {"name": "criterion", "type": "categorical", "values": ["gini", "entropy"]},
            ],
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("when", "every", "previous", "missed", "tuned"),
    [
        ("always", 1, 5, False, True),
        ("every_nth", 3, 0, False, True),
        ("every_nth", 3, 2, False, False),
        ("every_nth", 3, 3, False, True),
        ("after_rule_miss", 1, 4, False, False),
        ("after_rule_miss", 1, 4, True, True),
        ("after_rule_miss", 1, 0, False, True),  # a first run has nothing better to start from
    ],
)
def test_when_a_retrain_is_tuned(when: str, every: int, previous: int, missed: bool, tuned: bool) -> None:
    assert tuning.should_tune(a_tuning(when=when, every=every), previous, missed) is tuned


def test_no_tuning_policy_never_tunes() -> None:
    assert tuning.should_tune(None, 0, True) is False


def test_kubernetes_names_are_dns_labels_short_enough_for_katib_trials_and_stable() -> None:
    name = tuning.kube_name("mlcd-Wine_Quality-0190f3a2-7c1e-7d11-9f00-33aa21b4c0de")
    assert len(name) <= 40 and name == name.lower()
    assert name.startswith("mlcd-wine-quality-")
    assert name == tuning.kube_name("mlcd-Wine_Quality-0190f3a2-7c1e-7d11-9f00-33aa21b4c0de")
    assert name != tuning.kube_name("mlcd-Wine_Quality-0190f3a2-7c1e-7d11-9f00-33aa21b4c0df")


@cache
def katib_schema() -> jsonschema.Draft7Validator:
    spec = json.loads((SHARED / "katib" / "swagger.json").read_text())
    return jsonschema.Draft7Validator({"$ref": "#/components/schemas/v1beta1.Experiment", **spec})


def an_experiment(**fields: Any) -> dict[str, Any]:
    request = TuningRequest(
        "mlcd-wine-quality-0123456789ab",
        "wine_quality",
        PipelineRef("wine_quality", "tree-1", "wine_quality", "tree-1", "/pipelines/tree-1.yaml"),
        {"data_uri": "s3://landing/a.csv", "model_name": "wine_quality-trials"},
        a_tuning(**fields),
    )
    return katib.experiment(
        request, "kubeflow-ml", "registry.example.com/ml/mlcd:1", {"MLCD_KFP_HOST": "http://kfp"}
    )


def test_the_experiment_is_valid_against_katibs_published_schema_and_says_what_the_policy_says() -> None:
    obj = an_experiment(algorithm="cmaes", max_trials=8, parallel_trials=4)

    assert list(katib_schema().iter_errors(obj)) == []
    assert katib.schema_problems(obj) == []
    spec = obj["spec"]
    assert spec["algorithm"] == {"algorithmName": "cmaes"}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (8, 4)
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "accuracy",
        "additionalMetricNames": [],
        "goal": 0.99,
    }
    assert spec["parameters"][0] == {
        "name": "n_estimators",
        "parameterType": "int",
        "feasibleSpace": {"min": "10", "max": "200", "step": "10"},
    }
    assert spec["parameters"][2]["feasibleSpace"] == {"list": ["gini", "entropy"]}
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == spec["trialTemplate"]["primaryContainerName"]
    assert (
        "--set" in container["args"]
        and "n_estimators:int=${trialParameters.n_estimators}" in container["args"]
    )
    assert {"name": "trialName", "reference": "${trialSpec.Name}"} in spec["trialTemplate"]["trialParameters"]


def test_an_experiment_with_a_wrongly_typed_field_is_refused_before_it_is_sent() -> None:
    obj = an_experiment()
    obj["spec"]["maxTrialCount"] = "twelve"

    assert any("maxTrialCount" in p for p in katib.schema_problems(obj))
    assert list(katib_schema().iter_errors(obj))  # Katib's schema refuses it too


def test_an_experiment_status_reads_as_katib_writes_it() -> None:
    obj = an_experiment()
    obj["status"] = {
        "conditions": [
            {"type": "Created", "status": "True"},
            {"type": "Running", "status": "False"},
            {"type": "Succeeded", "status": "True", "message": "max trials reached"},
        ],
        "trials": 8,
        "currentOptimalTrial": {
            "bestTrialName": "mlcd-wine-quality-0123456789ab-x7k2p9qs",
            "parameterAssignments": [
                {"name": "n_estimators", "value": "130"},
                {"name": "criterion", "value": "gini"},
            ],
            "observation": {
                "metrics": [{"name": "accuracy", "min": "0.91", "max": "0.977", "latest": "0.95"}]
            },
        },
    }

    result = katib.result_of(obj)

    assert (result.state, result.best_trial, result.trials) == (
        "SUCCEEDED",
        "mlcd-wine-quality-0123456789ab-x7k2p9qs",
        8,
    )
    assert result.objective_value == 0.977  # maximize: the metric's max
    assert tuning.typed_assignments(a_tuning(), result.parameters) == {
        "n_estimators": 130,
        "criterion": "gini",
    }
    with pytest.raises(ValueError, match="outside the search space: max_depth"):
        tuning.typed_assignments(a_tuning(), {"max_depth": "3"})


def test_a_running_or_failed_experiment_reads_so() -> None:
    obj = an_experiment()
    obj["status"] = {"conditions": [{"type": "Running", "status": "True"}]}
    assert katib.result_of(obj).state == "RUNNING"
    obj["status"]["conditions"].append({"type": "Failed", "status": "True", "message": "3 trials failed"})
    failed = katib.result_of(obj)
    assert failed.state == "FAILED" and tuning.failure(failed).endswith("3 trials failed")


@cache
def crd_schema(path: str, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((SHARED / path).read_text(), Loader=yaml.CSafeLoader)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def test_a_job_template_is_named_filled_and_valid_against_the_operators_crd() -> None:
    template = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "XGBoostJob",
        "metadata": {"labels": {"team": "ml"}},
        "spec": {
            "xgbReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "xgboost",
                                    "image": "train:1",
                                    "args": [
                                        "--data",
                                        "${parameters.data_uri}",
                                        "--run=${parameters.run_name}",
                                    ],
                                }
                            ]
                        }
                    },
                }
            }
        },
    }

    job = training_jobs.render(
        template, "mlcd-wine-1", "ml", {"data_uri": "s3://b/k.csv", "run_name": "mlcd-wine-evt"}
    )

    assert job["metadata"]["name"] == "mlcd-wine-1" and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["labels"] == {"team": "ml", "app.kubernetes.io/managed-by": "mlcd"}
    args = job["spec"]["xgbReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--data", "s3://b/k.csv", "--run=mlcd-wine-evt"]
    assert training_jobs.schema_problems(job) == []
    assert list(crd_schema("training-operator/kubeflow.org_xgboostjobs.yaml", "v1").iter_errors(job)) == []
    assert template["metadata"] == {"labels": {"team": "ml"}}  # the policy's template is left as it was


def test_a_job_template_naming_an_unknown_parameter_is_refused() -> None:
    template = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "spec": {"args": ["${parameters.learning_rate}"]},
    }
    with pytest.raises(PermanentError, match=r"\$\{parameters.learning_rate\}, which the run does not have"):
        training_jobs.render(template, "n", "ml", {"data_uri": "x"})


@pytest.mark.parametrize(
    ("plural", "conditions", "state"),
    [
        ("pytorchjobs", [], "PENDING"),
        ("pytorchjobs", [("Created", "True")], "PENDING"),
        ("pytorchjobs", [("Created", "True"), ("Running", "True")], "RUNNING"),
        ("tfjobs", [("Created", "True"), ("Running", "False"), ("Succeeded", "True")], "SUCCEEDED"),
        ("trainjobs", [("Created", "True"), ("Complete", "True")], "SUCCEEDED"),
        ("xgboostjobs", [("Created", "True"), ("Running", "False"), ("Failed", "True")], "FAILED"),
    ],
)
def test_a_jobs_conditions_say_where_it_stands(
    plural: str, conditions: list[tuple[str, str]], state: str
) -> None:
    kind = next(k for k in training_jobs.kinds().values() if k.plural == plural)
    job = {
        "metadata": {"name": "j"},
        "status": {"conditions": [{"type": t, "status": s, "message": "m"} for t, s in conditions]},
    }
    run = training_jobs.run_of(kind, job)
    assert (run.state, run.run_id) == (state, f"{plural}/j")


def test_a_policy_refuses_an_incoherent_training_section() -> None:
    with pytest.raises(ValidationError, match="needs min <= max"):
        a_tuning(parameters=[{"name": "n", "type": "int", "min": 5, "max": 1}])
    with pytest.raises(ValidationError, match="grid search needs a step"):
        a_tuning(algorithm="grid")
    with pytest.raises(ValidationError, match="parallel_trials cannot exceed max_trials"):
        a_tuning(max_trials=2, parallel_trials=3)
    with pytest.raises(ValidationError, match=r"training\.job must be one of"):
        Training.model_validate({"backend": "job", "job": {"apiVersion": "batch/v1", "kind": "Job"}})
    with pytest.raises(ValidationError, match="names a pipeline"):
        Training.model_validate({"backend": "pipeline"})
    with pytest.raises(ValidationError, match="needs backend pipeline"):
        Training.model_validate(
            {
                "backend": "job",
                "job": {"apiVersion": "kubeflow.org/v1", "kind": "TFJob"},
                "tuning": a_tuning().model_dump(),
            }
        )


def test_a_trial_takes_its_assignments_in_their_types() -> None:
    assert trial.assignment("n_estimators:int=57") == ("n_estimators", 57)
    assert trial.assignment("test_fraction:double=0.25") == ("test_fraction", 0.25)
    assert trial.assignment("criterion:categorical=gini") == ("criterion", "gini")
    assert trial.assignment("depth:discrete=4") == ("depth", 4)
    with pytest.raises(Exception, match="is not a int"):
        trial.assignment("n:int=many")
