"""The Seldon adapter's objects, status reading and policy rules, and its writes on the Kubernetes API
emulator for Seldon's CRDs (no controller: what mlcd writes, not what Seldon does with it)."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from kubernetes import client

from mlcd import bootstrap
from mlcd.adapters import platforms, seldon
from mlcd.config import Settings
from mlcd.errors import ConfigError
from mlcd.policy import analysis
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Rollout
from mlcd.ports import ModelVersion
from tests.fakes import seldon_controller

pytestmark = pytest.mark.xdist_group("seldon-rollouts")
NAMESPACE = "models"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_bundled_schemas_are_seldons_own_crd_schemas() -> None:
    raw = resources.files("mlcd.adapters").joinpath("seldon_schemas.json.gz").read_bytes()
    bundled = json.loads(gzip.decompress(raw))
    assert bundled == {
        "Model": seldon_controller.crd_schema("models"),
        "Experiment": seldon_controller.crd_schema("experiments"),
    }


@pytest.mark.parametrize("percent", [0, 10, 50, 90])
def test_every_experiment_step_is_valid_for_the_crd_and_for_seldons_scheduler(percent: int) -> None:
    spec = seldon.experiment_spec("wine", "wine-v3", percent)
    obj = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment", "metadata": {"name": "x"}}
    assert list(seldon_controller._validator("experiments").iter_errors({**obj, "spec": spec})) == []
    assert seldon_controller._scheduler_problem(spec) is None and seldon.experiment_problems(spec) == []
    if percent == 0:  # shadow: every request copied to the candidate, all answers from the endpoint
        assert spec["candidates"] == [{"name": "wine", "weight": 100}]
        assert spec["mirror"] == {"name": "wine-v3", "percent": 100}
    else:
        assert spec["candidates"] == [
            {"name": "wine", "weight": 100 - percent},
            {"name": "wine-v3", "weight": percent},
        ]


def test_what_seldons_scheduler_would_refuse_is_named() -> None:
    spec = {
        "default": "wine",
        "candidates": [{"name": "wine-v3", "weight": 1}],
        "mirror": {"name": "wine-v3", "percent": 1},
    }
    problems = seldon.experiment_problems(spec)
    assert problems == [
        "default wine is not one of the candidates",
        "a model appears twice among the candidates and the mirror",
    ]


def _endpoint(ready_at: datetime, written_at: datetime | None) -> dict[str, Any]:
    notes = {seldon.STABLE_VERSION: "2"} | ({seldon.WRITTEN_AT: _stamp(written_at)} if written_at else {})
    return {
        "metadata": {"name": "wine", "namespace": NAMESPACE, "annotations": notes},
        "spec": {"storageUri": "s3://models/wine/2"},
        "status": {
            "conditions": [
                {
                    "type": "ModelReady",
                    "status": "True",
                    "reason": "ModelAvailable",
                    "lastTransitionTime": _stamp(ready_at),
                },
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ModelAvailable",
                    "lastTransitionTime": _stamp(ready_at),
                },
            ]
        },
    }


def test_a_ready_condition_from_before_mlcds_write_is_not_taken_for_the_new_spec() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    stale = seldon.serving_state("wine", _endpoint(now - timedelta(minutes=5), now), None, None)
    assert not stale.ready and stale.stable_uri == "" and "has not reported Ready since" in stale.message
    fresh = seldon.serving_state("wine", _endpoint(now, now), None, None)
    assert fresh.ready and fresh.stable_uri == "s3://models/wine/2" and fresh.traffic == {"wine": 100}
    untouched = seldon.serving_state("wine", _endpoint(now - timedelta(days=1), None), None, None)
    assert untouched.ready


def test_a_split_counts_as_served_only_once_the_experiment_is_active() -> None:
    now = datetime.now(UTC)
    endpoint = _endpoint(now, None)
    candidate = {
        **_endpoint(now, None),
        "metadata": {"name": "wine-v3", "annotations": {seldon.CANDIDATE_VERSION: "3"}},
    }
    experiment: dict[str, Any] = {
        "metadata": {"name": "mlcd-wine"},
        "spec": seldon.experiment_spec("wine", "wine-v3", 10),
    }
    waiting = seldon.serving_state("wine", endpoint, experiment, candidate)
    assert (waiting.canary_version, waiting.canary_percent, waiting.observed_percent, waiting.ready) == (
        "3",
        10,
        0,
        False,
    )
    experiment["status"] = {
        "conditions": [
            {"type": kind, "status": "True"} for kind in ("ExperimentReady", "CandidatesReady", "MirrorReady")
        ]
    }
    active = seldon.serving_state("wine", endpoint, experiment, candidate)
    assert (active.observed_percent, active.ready, active.traffic) == (10, True, {"wine": 90, "wine-v3": 10})
    assert (active.canary_revision, active.stable_revision, active.platform) == ("wine-v3", "wine", "seldon")


@pytest.mark.parametrize(
    ("rollout", "refusal"),
    [
        ({"steps": [0, 10, 100]}, "only rollout.platform: seldon can mirror"),
        ({"platform": "kserve", "steps": [0, 100]}, "only rollout.platform: seldon can mirror"),
        ({"steps": [10, 0, 100]}, "steps must rise strictly"),
        (
            {"platform": "seldon", "analysis": [{"name": "p", "template": "request-duration-p95", "max": 1}]},
            "use request-duration-mean",
        ),
        (
            {
                "platform": "seldon",
                "analysis": [{"name": "a", "template": "prediction-agreement", "min": 0.9}],
            },
            "rollout.probe",
        ),
        (
            {"analysis": [{"name": "r", "template": "latency-ratio-to-champion", "max": 2}]},
            "need rollout.platform: seldon",
        ),
        ({"platform": "seldon", "probe": {"inputs": []}}, "Open Inference Protocol request"),
    ],
)
def test_what_a_platform_cannot_do_is_refused_in_the_policy(rollout: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValueError, match=re.escape(refusal)):
        Rollout.model_validate(rollout)


def test_seldons_default_checks_hold_the_mean_latency_to_the_p95_bound() -> None:
    checks = {c.name: c for c in Rollout.model_validate({"platform": "seldon"}).checks()}
    assert checks["latency-mean"].template == "request-duration-mean" and checks["latency-mean"].max == 1.0
    assert "latency-p95" in {c.name for c in Rollout().checks()}


def test_the_agreement_is_the_share_of_rows_whose_outputs_are_all_equal() -> None:
    def answer(*labels: int, probability: float = 0.25) -> dict[str, Any]:
        return {
            "outputs": [
                {"name": "predict", "shape": [len(labels)], "datatype": "INT64", "data": list(labels)},
                {
                    "name": "proba",
                    "shape": [len(labels), 1],
                    "datatype": "FP64",
                    "data": [[probability]] * len(labels),
                },
            ]
        }

    assert seldon.agreement(answer(0, 1, 1), answer(0, 1, 1)) == 1.0
    assert seldon.agreement(answer(0, 1, 1), answer(0, 1, 0)) == pytest.approx(2 / 3)
    assert seldon.agreement(answer(0, 1), answer(0, 1, probability=0.25 + 1e-9)) == 1.0
    assert seldon.agreement(answer(0, 1), answer(0, 1, probability=0.3)) == 0.0
    assert seldon.agreement(answer(0, 1), {"outputs": []}) == 0.0


def test_where_seldons_agent_cannot_copy_from_is_said() -> None:
    assert seldon.storage_problem("s3://mlflow/wine/1/artifacts/model") is None
    assert "proxied artifact scheme" in str(seldon.storage_problem("mlflow-artifacts:/1/abc/artifacts/model"))
    assert "registry reference" in str(seldon.storage_problem("models:/m-123"))
    assert "rclone remote" in str(seldon.storage_problem("/mnt/models/wine"))


def _policies(folder: Path, platform: str) -> PolicyBook:
    (folder / "wine.yaml").write_text(f"model: wine\nrollout:\n  platform: {platform}\n")
    return PolicyBook(folder)


async def test_a_model_on_a_platform_the_installation_does_not_serve_is_refused_with_the_setting(
    tmp_path: Path,
) -> None:
    policies = _policies(tmp_path, "seldon")
    served, analysed = bootstrap._serving(
        Settings(
            home=tmp_path / "home",
            policies_dir=tmp_path,
            kserve_namespace="models",
            prometheus_url="http://p:9090",
        ),
        policies,
    )
    assert isinstance(served, platforms.ServingByPlatform) and not isinstance(analysed, seldon.SeldonAnalysis)
    version = ModelVersion("wine", "3", None, "s3://mlflow/wine/3", artifact_uri="s3://mlflow/wine/3")
    assert "set MLCD_SELDON_NAMESPACE" in str(served.servable_problem(version, ()))
    with pytest.raises(ConfigError, match=re.escape("rollout.platform seldon")):
        await served.state("wine")

    both, analysed = bootstrap._serving(
        Settings(
            home=tmp_path / "home",
            policies_dir=tmp_path,
            kserve_namespace="models",
            seldon_namespace="seldon",
            prometheus_url="http://p:9090",
        ),
        policies,
    )
    assert isinstance(both, platforms.ServingByPlatform) and isinstance(
        both.for_model("wine"), seldon.SeldonServing
    )
    assert isinstance(analysed, seldon.SeldonAnalysis)


async def test_a_canary_step_writes_a_candidate_model_and_an_experiment_seldon_accepts(
    tmp_path: Path,
) -> None:
    policies = _policies(tmp_path, "seldon")
    async with seldon_controller.api_running() as api:
        api.add_model(NAMESPACE, "wine", "s3://mlflow/wine/1", requirements=["mlflow"], memory="100Mi")
        serving = seldon.SeldonServing(
            lambda: client.ApiClient(client.Configuration(host=api.url)), NAMESPACE, policies
        )
        await serving.set_canary("wine", "3", "s3://mlflow/wine/3", 0)
        api.conflicts_to_inject = 1  # another writer between mlcd's read and its patch: re-read, retried
        await serving.set_canary("wine", "3", "s3://mlflow/wine/3", 10)
        await serving.set_canary("wine", "3", "s3://mlflow/wine/3", 10)  # declarative: nothing to write
        candidate = api.get("models", NAMESPACE, "wine-v3")
        experiment = api.get("experiments", NAMESPACE, "mlcd-wine")
        state = await serving.state("wine")

    assert candidate is not None and candidate["spec"] == {
        "storageUri": "s3://mlflow/wine/3",
        "requirements": ["mlflow"],
        "memory": "100Mi",
    }
    assert experiment is not None and "mirror" not in experiment["spec"]
    assert experiment["spec"]["candidates"] == [
        {"name": "wine", "weight": 90},
        {"name": "wine-v3", "weight": 10},
    ]
    assert api.writes == [
        ("create", "models", "wine"),
        ("create", "models", "wine-v3"),
        ("create", "experiments", "mlcd-wine"),
        ("patch", "experiments", "mlcd-wine"),
    ]
    assert api.refused == []
    assert (state.canary_version, state.canary_percent, state.ready) == (
        "3",
        10,
        False,
    )  # no Seldon to say so


def test_seldons_templates_render_to_promql_over_its_agent_metrics() -> None:
    target = analysis.Target(NAMESPACE, "wine", "wine-v3", "wine", "3", 30.0)
    rollout = Rollout.model_validate(
        {
            "platform": "seldon",
            "analysis": [
                {"name": "count", "template": "request-count", "min": 1},
                {"name": "success", "template": "request-success-rate", "min": 0.9},
                {"name": "mean", "template": "request-duration-mean", "max": 1},
                {"name": "ratio", "template": "latency-ratio-to-champion", "max": 2},
            ],
        }
    )
    queries = {c.name: analysis.promql(c, "seldon", target) for c in rollout.checks()}
    for query in queries.values():
        promql_parser.parse(query)
        assert analysis.placeholders_in(query) == []
    assert 'seldon_model_infer_total{namespace="models",model="wine-v3"}' in queries["count"]
    assert 'code=~"2..|OK"' in queries["success"]
    assert 'seldon_model_infer_seconds_total{namespace="models",model="wine"}' in queries["ratio"]


def test_the_chart_lets_mlcd_create_and_delete_seldon_models_and_experiments_in_their_namespace_only() -> (
    None
):
    from tests.integration import test_helm_chart as chart

    manifests = chart.rendered("everything")
    role = chart.of_kind(manifests, "Role")["prod-mlcd-seldon"]
    binding = chart.of_kind(manifests, "RoleBinding")["prod-mlcd-seldon"]
    settings = chart.of_kind(manifests, "ConfigMap")["prod-mlcd-config"]["data"]

    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "seldon-models"
    assert role["rules"] == [
        {
            "apiGroups": ["mlops.seldon.io"],
            "resources": ["models", "experiments"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        }
    ]
    assert settings["MLCD_SELDON_NAMESPACE"] == "seldon-models"
    assert "prod-mlcd-seldon" not in chart.of_kind(chart.rendered("defaults"), "Role")


async def test_a_superseding_version_replaces_the_candidate_and_its_model_goes(tmp_path: Path) -> None:
    policies = _policies(tmp_path, "seldon")
    async with seldon_controller.api_running() as api:
        api.add_model(NAMESPACE, "wine", "s3://mlflow/wine/1")
        serving = seldon.SeldonServing(
            lambda: client.ApiClient(client.Configuration(host=api.url)), NAMESPACE, policies
        )
        await serving.set_canary("wine", "3", "s3://mlflow/wine/3", 50)
        await serving.set_canary("wine", "4", "s3://mlflow/wine/4", 10)
        experiment = api.get("experiments", NAMESPACE, "mlcd-wine")
        models = sorted(name for plural, _, name in api.objects if plural == "models")

    assert experiment is not None
    assert experiment["spec"]["candidates"] == [
        {"name": "wine", "weight": 90},
        {"name": "wine-v4", "weight": 10},
    ]
    assert models == ["wine", "wine-v4"]
    assert api.refused == []
