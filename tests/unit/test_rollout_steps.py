"""Rollout arithmetic, analysis verdicts, KServe patches and local traffic splitting, without I/O."""

from __future__ import annotations

import json

import pytest

from mlcd.adapters import kserve, runtimes
from mlcd.deployer import steps
from mlcd.local import inference_protocol, serving_state
from mlcd.local.serving import CanaryRouter
from mlcd.policy.schema import Predictor, Thresholds

LIMITS = Thresholds(max_error_rate=0.05, max_p95_latency_s=0.5, min_requests=10)


def test_steps_advance_until_the_last() -> None:
    assert steps.next_step([10, 50, 100], 0) == 1
    assert steps.next_step([10, 50, 100], 2) is None
    assert steps.is_final([10, 50, 100], 2) and not steps.is_final([10, 50, 100], 1)


def test_figures_within_thresholds_pass() -> None:
    verdict = steps.judge({"requests": 50, "error_rate": 0.01, "p95_latency_s": 0.2}, LIMITS, ready=True)
    assert verdict.passed and verdict.conclusive


def test_each_breached_threshold_is_named() -> None:
    verdict = steps.judge({"requests": 50, "error_rate": 0.2, "p95_latency_s": 0.9}, LIMITS, ready=True)
    assert not verdict.passed
    assert verdict.reason == "error rate 0.200 above 0.05; p95 latency 0.900s above 0.5s"


def test_a_revision_that_is_not_ready_fails_whatever_its_figures() -> None:
    verdict = steps.judge({"requests": 50}, LIMITS, ready=False, not_ready_why="image pull failed")
    assert not verdict.passed and verdict.conclusive
    assert verdict.reason == "revision not Ready: image pull failed"


def test_too_few_requests_is_inconclusive_not_a_failure() -> None:
    verdict = steps.judge({"requests": 3, "error_rate": 1.0}, LIMITS, ready=True)
    assert not verdict.conclusive


@pytest.mark.parametrize("percent", [1, 10, 33, 50, 99])
def test_traffic_split_is_exact_over_every_hundred_requests(percent: int) -> None:
    counter = CanaryRouter()
    assert sum(counter.canary_next(percent) for _ in range(100)) == percent


def test_routing_split_names_the_share_of_each_version() -> None:
    routing = serving_state.Routing(
        stable=serving_state.Revision(version="1", uri="u1"),
        canary=serving_state.Canary(version="2", uri="u2", percent=10),
    )
    assert routing.split() == {"1": 90, "2": 10}


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3]}
    assert kserve.merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3]}


def _isvc(**predictor: object) -> dict[str, object]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "wine", "resourceVersion": "7"},
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/1"},
                **predictor,
            }
        },
    }


@pytest.mark.parametrize("mode", ["serverless", "raw"])
def test_every_patched_inference_service_validates_against_the_crd(mode: kserve.Mode) -> None:
    current = _isvc()
    for patch in (
        kserve.canary_patch(current, mode, "2", "s3://m/2", 10, Predictor()),
        kserve.stable_patch(current, mode, "2", "s3://m/2", Predictor()),
        kserve.restore_patch(current, mode, "1", "s3://m/1", Predictor(model_format="sklearn")),
    ):
        assert kserve.schema_problems(kserve.merge_patch(current, patch)) == []


def test_a_fresh_inference_service_remembers_its_storage_uri_as_stable() -> None:
    patch = kserve.canary_patch(_isvc(), "serverless", "2", "s3://m/2", 10, Predictor())
    assert patch["metadata"]["annotations"][kserve.STABLE_URI] == "s3://m/1"


def test_serving_state_reads_the_canary_from_the_spec_and_readiness_from_the_status() -> None:
    obj = kserve.merge_patch(
        _isvc(), kserve.canary_patch(_isvc(), "serverless", "2", "s3://m/2", 10, Predictor())
    )
    obj["status"] = {"conditions": [{"type": "Ready", "status": "False", "message": "model load failed"}]}
    state = kserve.serving_state("wine", obj, "serverless")
    assert (state.canary_version, state.canary_percent, state.ready) == ("2", 10, False)
    assert state.message == "model load failed"


def _tensors(inputs: list[dict[str, object]]) -> list[inference_protocol.Tensor]:
    _, tensors = inference_protocol.read_request(json.dumps({"inputs": inputs}).encode(), None)
    return tensors


def test_one_tensor_becomes_an_array_of_its_shape() -> None:
    tensors = _tensors([{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}])
    assert inference_protocol.model_input(tensors, inference_protocol.Signature()).tolist() == [
        [1, 2],
        [3, 4],
    ]


def test_a_tensor_that_does_not_fit_its_shape_is_a_bad_request() -> None:
    with pytest.raises(inference_protocol.BadRequest, match="do not fit shape"):
        _tensors([{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4]}])


def test_predictions_come_back_as_typed_tensors() -> None:
    import numpy as np

    (tensor,) = inference_protocol.output_tensors(np.array([0, 1, 1]), ())
    assert (tensor.name, inference_protocol.datatype_of(tensor.values.dtype)) == ("predict", "INT64")
    assert tensor.values.tolist() == [0, 1, 1]


# The MLmodel `flavors` sections MLflow 3 writes (mlflow.sklearn / mlflow.xgboost save_model), trimmed.
PYFUNC_SECTION = {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"}
SKLEARN = {"python_function": PYFUNC_SECTION, "sklearn": {"pickled_model": "model.pkl"}}
SKOPS = {"python_function": PYFUNC_SECTION, "sklearn": {"pickled_model": "model.skops"}}
XGBOOST = {"python_function": {"data": "model.ubj"}, "xgboost": {"data": "model.ubj", "model_format": "ubj"}}
OLD_XGB = {"python_function": {"data": "model.xgb"}, "xgboost": {"data": "model.xgb", "model_format": "xgb"}}
KERAS = {"tensorflow": {"saved_model_dir": "tf2model"}}


@pytest.mark.parametrize(
    ("model_format", "flavors", "problem"),
    [
        ("mlflow", SKLEARN, None),
        ("sklearn", SKLEARN, None),
        ("xgboost", XGBOOST, None),
        ("mlflow", XGBOOST, None),
        (
            "xgboost",
            SKLEARN,
            "the xgboost runtime needs the xgboost flavor: set rollout.predictor.model_format "
            "to mlflow or sklearn",
        ),
        (
            "sklearn",
            SKOPS,
            "the sklearn runtime loads model.joblib or model.pickle or model.pkl, and the sklearn "
            "flavor's model file is model.skops: set rollout.predictor.model_format to mlflow",
        ),
        ("xgboost", OLD_XGB, "flavor's model file is model.xgb"),
        (
            "mlflow",
            KERAS,
            "the mlflow runtime needs the python_function flavor: log the model with a "
            "python_function flavor",
        ),
        (
            "tensorflow",
            KERAS,
            "read numbered model folders (<n>/ holding a SavedModel), not an MLflow model folder",
        ),
        ("pytorch", SKLEARN, "TorchServe reads model-store/*.mar"),
        ("onnx", SKLEARN, "Triton reads a model repository"),
        ("triton", SKLEARN, None),  # a Triton model repository logged as the version's artifacts
        ("onnx", {}, None),  # no MLmodel was read: the flavors are unknown
    ],
)
def test_the_predictors_runtime_must_load_the_versions_model_files(
    model_format: str, flavors: dict[str, dict[str, str]], problem: str | None
) -> None:
    found = runtimes.flavor_problem(model_format, "4", flavors)
    assert found == problem if problem is None else (found is not None and problem in found), found
