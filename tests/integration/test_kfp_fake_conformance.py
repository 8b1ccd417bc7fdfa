"""The KFP fake answers what real KFP answers: every JSON body it sends, on each path mlcd uses, is read
with kfp-server-api's own v2beta1 models (the generated client's deserializer, which checks enum values
and parses timestamps) and walked field by field: a key the model does not have fails, and so does a
field mlcd reads that the answer leaves out."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import kfp_server_api
import pytest

from tests.fakes import kfp_api

PREFIX = kfp_api.PREFIX
# What mlcd's KFP adapter reads from each answer: a fake that leaves one out would hide a real bug.
READ_BY_MLCD = {
    "V2beta1Run": {"run_id", "display_name", "state", "run_details", "experiment_id"},
    "V2beta1PipelineVersion": {"pipeline_id", "pipeline_version_id", "display_name", "package_url"},
    "V2beta1Pipeline": {"pipeline_id", "display_name"},
    "V2beta1Experiment": {"experiment_id", "display_name", "namespace"},
    "V2beta1PipelineTaskDetail": {"display_name", "task_id", "state"},
}
_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+), (.+)\)$")


def strict(type_name: str, value: Any, where: str = "$") -> list[str]:
    """Problems of `value` as the kfp-server-api type `type_name` (unknown or missing keys, wrong shapes)."""
    if value is None:
        return []
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{where}: {type_name} expected, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in strict(m.group(1), item, f"{where}[{i}]")]
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{where}: {type_name} expected, got {type(value).__name__}"]
        return [p for k, item in value.items() for p in strict(m.group(2), item, f"{where}.{k}")]
    model = getattr(kfp_server_api.models, type_name, None)
    if model is None or not getattr(model, "openapi_types", None):
        return []  # a primitive, an enum (the deserializer checks its value) or `object`
    if not isinstance(value, dict):
        return [f"{where}: {type_name} expected, got {type(value).__name__}"]
    by_key = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = [f"{where}.{k}: not a field of {type_name}" for k in value if k not in by_key]
    problems += [
        f"{where}: {type_name} lacks {k}, which mlcd reads"
        for k in sorted(READ_BY_MLCD.get(type_name, set()) - set(value))
    ]
    for key, item in value.items():
        if key in by_key:
            problems += strict(model.openapi_types[by_key[key]], item, f"{where}.{key}")
    return problems


class _Response:
    def __init__(self, data: str) -> None:
        self.data = data


def conforms(answer: httpx.Response, type_name: str) -> Any:
    """The answer read by kfp-server-api's deserializer; fails on any strict() problem."""
    assert answer.status_code < 300, answer.text
    problems = strict(type_name, answer.json())
    assert problems == [], problems
    client = kfp_server_api.ApiClient()
    return client.deserialize(_Response(answer.text), type_name)


@pytest.fixture
def fake() -> Iterator[kfp_api.FakeKfp]:
    with kfp_api.serve() as server:
        yield server


def _upload(http: httpx.Client, path: str, **query: str) -> httpx.Response:
    files = {"uploadfile": ("pipeline.yaml", b"pipelineInfo:\n  name: wine-quality\n", "application/x-yaml")}
    return http.post(f"{PREFIX}{path}", params=query, files=files)


def test_every_answer_mlcd_reads_is_a_v2beta1_model(fake: kfp_api.FakeKfp) -> None:
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        conforms(http.get(f"{PREFIX}/healthz"), "V2beta1GetHealthzResponse")
        pipeline = conforms(
            _upload(http, "/pipelines/upload", display_name="wine_quality"), "V2beta1Pipeline"
        )
        version = conforms(
            _upload(
                http, "/pipelines/upload_version", pipelineid=pipeline.pipeline_id, display_name="0123abcd"
            ),
            "V2beta1PipelineVersion",
        )
        conforms(http.get(f"{PREFIX}/pipelines"), "V2beta1ListPipelinesResponse")
        conforms(
            http.get(
                f"{PREFIX}/pipelines/{pipeline.pipeline_id}/versions", params={"sort_by": "created_at desc"}
            ),
            "V2beta1ListPipelineVersionsResponse",
        )
        conforms(
            http.get(f"{PREFIX}/pipelines/{pipeline.pipeline_id}/versions/{version.pipeline_version_id}"),
            "V2beta1PipelineVersion",
        )
        experiment = conforms(
            http.post(f"{PREFIX}/experiments", json={"display_name": "mlcd", "namespace": "team-a"}),
            "V2beta1Experiment",
        )
        conforms(
            http.get(f"{PREFIX}/experiments", params={"namespace": "team-a"}),
            "V2beta1ListExperimentsResponse",
        )
        body = {
            "display_name": "mlcd-wine-1",
            "experiment_id": experiment.experiment_id,
            "pipeline_version_reference": {
                "pipeline_id": pipeline.pipeline_id,
                "pipeline_version_id": version.pipeline_version_id,
            },
            "runtime_config": {"parameters": {"data_uri": "s3://landing/b.csv", "n_estimators": 50}},
        }
        runs = [
            conforms(http.post(f"{PREFIX}/runs", json={**body, "display_name": n}), "V2beta1Run")
            for n in "abc"
        ]
        fake.finish(runs[0].run_id, "SUCCEEDED")
        fake.finish(runs[1].run_id, "FAILED", failed_task="train-model", error="ValueError: too few rows")
        assert http.post(f"{PREFIX}/runs/{runs[2].run_id}:terminate").json() == {}
        states = [conforms(http.get(f"{PREFIX}/runs/{r.run_id}"), "V2beta1Run").state for r in runs]
        listed = conforms(
            http.get(
                f"{PREFIX}/runs", params={"filter": json.dumps({"predicates": []}), "namespace": "team-a"}
            ),
            "V2beta1ListRunsResponse",
        )
        failed = conforms(http.get(f"{PREFIX}/runs/{runs[1].run_id}"), "V2beta1Run")
        missing = http.get(f"{PREFIX}/runs/no-such-run")

    assert states == ["SUCCEEDED", "FAILED", "CANCELED"]
    assert len(listed.runs) == 3
    assert [t.display_name for t in failed.run_details.task_details if t.state == "FAILED"][
        -1
    ] == "train-model"
    assert missing.status_code == 404 and strict("GoogleRpcStatus", missing.json()) == []
    assert set(missing.json()) <= {"code", "message", "details"}


def test_the_fake_reports_no_run_outputs_because_v2beta1_has_none(fake: kfp_api.FakeKfp) -> None:
    """`plugins_output` is where KFP's plugins (MLflow integration) report, not the pipeline's outputs."""
    with httpx.Client(base_url=fake.url, timeout=10) as http:
        pipeline = _upload(http, "/pipelines/upload", display_name="p").json()
        version = _upload(
            http, "/pipelines/upload_version", pipelineid=pipeline["pipeline_id"], display_name="v"
        )
        reference = {
            "pipeline_id": pipeline["pipeline_id"],
            "pipeline_version_id": version.json()["pipeline_version_id"],
        }
        run = http.post(
            f"{PREFIX}/runs", json={"display_name": "r", "pipeline_version_reference": reference}
        ).json()
        fake.finish(run["run_id"], "SUCCEEDED")
        answer = http.get(f"{PREFIX}/runs/{run['run_id']}").json()

    assert "plugins_output" not in answer
    assert not {"outputs", "model_version"} & set(answer)


def test_a_field_real_kfp_does_not_have_is_caught() -> None:
    """The check itself: an invented key and a missing one are both reported."""
    invented = {
        "run_id": "r",
        "display_name": "n",
        "state": "RUNNING",
        "run_details": {},
        "experiment_id": "e",
    }

    assert strict("V2beta1Run", {**invented, "model_version": "4"}) == [
        "$.model_version: not a field of V2beta1Run"
    ]
    assert strict("V2beta1Run", {k: v for k, v in invented.items() if k != "state"}) == [
        "$: V2beta1Run lacks state, which mlcd reads"
    ]
    assert strict("V2beta1Run", {**invented, "run_details": {"task_details": [{"nonsense": 1}]}}) != []
