"""Local serving for real: MLflow model versions, Open Inference Protocol over HTTP, traffic split,
per-revision counters scraped by a real Prometheus and read back through PromQL.

Triton's own client against the same routes: test_local_serving_tritonclient.py.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import prometheus_client
import pytest
from fastapi import FastAPI

from mlcd.adapters.prometheus import LocalAnalysis, PrometheusAnalysis
from mlcd.local.serving import LocalServing, router
from tests.support import flows, ingest_app, prometheus
from tests.support.serving_models import FEATURES, GOOD_ROWS, SHIFTED_ROWS, infer_body, register_versions


@pytest.fixture(scope="module")
def model(mlflow_uri: str) -> str:
    name = f"wine_{uuid.uuid4().hex[:8]}"
    register_versions(mlflow_uri, name)
    return name


@pytest.fixture
async def served(tmp_path: Path, mlflow_uri: str) -> AsyncIterator[tuple[LocalServing, str]]:
    """Local serving on a real HTTP port with /metrics, as the main app mounts it."""
    serving = LocalServing(tmp_path / "home", mlflow_uri)
    app = FastAPI()
    app.include_router(router(serving))
    app.mount("/metrics", prometheus_client.make_asgi_app())
    async with ingest_app.serving(app) as url:
        yield serving, url.removeprefix("http://")


@pytest.fixture
def prometheus_url(served: tuple[LocalServing, str], tmp_path: Path) -> Iterator[str]:
    with prometheus.running([served[1]], tmp_path / "prometheus") as url:
        yield url


async def _infer(client: httpx.AsyncClient, model: str, rows: list[list[float]], n: int) -> Counter[str]:
    served_by: Counter[str] = Counter()
    for _ in range(n):
        response = await client.post(f"/v2/models/{model}/infer", json=infer_body(rows))
        served_by[f"{response.status_code}:{response.json().get('model_version', '-')}"] += 1
    return served_by


async def test_requests_split_by_percentage_with_real_predictions(
    served: tuple[LocalServing, str], model: str
) -> None:
    serving, address = served
    await serving.promote(model, "1", "models:/1")
    await serving.set_canary(model, "2", "models:/2", 25)

    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        assert (await client.get(f"/v2/models/{model}/ready")).status_code == 200
        metadata = (await client.get(f"/v2/models/{model}")).json()
        assert metadata["traffic"] == {"1": 75, "2": 25}
        answer = (await client.post(f"/v2/models/{model}/infer", json=infer_body(GOOD_ROWS))).json()
        split = await _infer(client, model, GOOD_ROWS, 39)

    assert answer["outputs"][0]["shape"] == [3]
    assert answer["outputs"][0]["data"] == [0, 1, 1]
    assert split + Counter({f"200:{answer['model_version']}": 1}) == Counter({"200:1": 30, "200:2": 10})
    assert serving.figures(model, "2", 60)["requests"] == 10


async def test_prometheus_scrapes_revision_counters_and_promql_sees_the_failing_canary(
    served: tuple[LocalServing, str], model: str, prometheus_url: str
) -> None:
    serving, address = served
    await serving.promote(model, "1", "models:/1")
    await serving.set_canary(model, "3", "models:/3", 50)

    analysis = PrometheusAnalysis(prometheus_url)
    errors = f'mlcd_serving_requests_total{{model="{model}",version="3",outcome="error"}}'
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        # A counter's first sample has no increase; rates need traffic after Prometheus first saw it.
        split = await _infer(client, model, SHIFTED_ROWS, 4)
        await _until(lambda: analysis.query(errors), 2, 10.0)
        split += await _infer(client, model, SHIFTED_ROWS, 16)
    assert split == Counter({"200:1": 10, "500:-": 10})
    await _until(lambda: analysis.query(errors), 10, 10.0)
    figures = await analysis.measure(model, "3", 30)
    assert figures["error_rate"] == pytest.approx(1.0)
    assert figures["requests"] > 0
    assert figures["p95_latency_s"] > 0
    stable = await analysis.measure(model, "1", 30)
    assert stable["error_rate"] == 0.0

    local = await LocalAnalysis(serving).measure(model, "3", 30)
    assert local["requests"] == 10 and local["error_rate"] == 1.0


async def test_a_restart_keeps_stable_and_canary(
    served: tuple[LocalServing, str], model: str, tmp_path: Path
) -> None:
    serving, _ = served
    await serving.promote(model, "1", "models:/1")
    await serving.set_canary(model, "2", "models:/2", 50)

    restarted = LocalServing(tmp_path / "home", "http://127.0.0.1:9")  # MLflow unreachable: cache on disk
    state = await restarted.state(model)
    assert (state.stable_version, state.canary_version, state.canary_percent) == ("1", "2", 50)
    served_by = Counter([(await restarted.predict(model, [GOOD_ROWS[0]])).version for _ in range(4)])
    assert served_by == Counter({"1": 2, "2": 2})

    await restarted.rollback(model, "1", "models:/1")
    assert (await restarted.state(model)).canary_version is None


async def test_a_request_without_content_type_is_answered_in_the_protocols_json(
    served: tuple[LocalServing, str], model: str
) -> None:
    serving, address = served
    await serving.promote(model, "1", "models:/1")
    body = json.dumps({"id": "req-7", **infer_body(GOOD_ROWS)}).encode()
    columns = {
        "inputs": [
            {
                "name": name,
                "shape": [len(GOOD_ROWS)],
                "datatype": "FP64",
                "data": [row[i] for row in GOOD_ROWS],
            }
            for i, name in enumerate(FEATURES)
        ]
    }
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        bare = await client.post(f"/v2/models/{model}/infer", content=body)  # no Content-Type at all
        by_column = await client.post(f"/v2/models/{model}/versions/1/infer", json=columns)
        no_output = await client.post(
            f"/v2/models/{model}/infer", json={**infer_body(GOOD_ROWS), "outputs": [{"name": "proba"}]}
        )
        nowhere = await client.get(f"/v2/models/{model}/config")

    assert "content-type" not in bare.request.headers
    assert bare.status_code == 200 and bare.headers["content-type"] == "application/json"
    assert bare.json() == {
        "model_name": model,
        "model_version": "1",
        "id": "req-7",
        "outputs": [{"name": "predict", "shape": [3], "datatype": "INT64", "data": [0, 1, 1]}],
    }
    assert by_column.status_code == 200 and by_column.json()["outputs"] == bare.json()["outputs"]
    assert (no_output.status_code, no_output.json()) == (
        400,
        {"error": "the model has no output 'proba'; it gives predict"},
    )
    assert nowhere.status_code == 404 and "error" in nowhere.json()


async def test_a_model_logged_without_a_signature_gets_its_feature_names_and_no_warning(
    served: tuple[LocalServing, str], model: str
) -> None:
    # Version 4 is logged as the wine-quality pipeline logs its models: fitted on a DataFrame, no signature.
    serving, address = served
    await serving.promote(model, "4", "models:/4")
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        metadata = (await client.get(f"/v2/models/{model}")).json()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            answer = await client.post(f"/v2/models/{model}/infer", json=infer_body(GOOD_ROWS))
    assert (metadata["inputs"], metadata["outputs"]) == ([], [])  # nothing the model did not record
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [0, 1, 1]
    assert [str(w.message) for w in seen if "feature names" in str(w.message)] == []


async def _until(probe: Callable[[], Awaitable[float | None]], at_least: float, timeout_s: float) -> None:
    async def reached() -> bool:
        value = await probe()  # None: Prometheus has no sample yet
        return value is not None and value >= at_least

    await flows.eventually(reached, f"Prometheus scraping a count of {at_least}", timeout_s)
