"""Triton's own HTTP client (`tritonclient.http`, binary tensors by default) against local serving with
real MLflow-registered scikit-learn models: health, metadata from the signature, readiness after a
restart, FP32/FP64/INT64 inference that matches the model's own predictions, and the protocol's errors.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from fastapi import FastAPI
from tritonclient.utils import InferenceServerException

from mlcd import __version__
from mlcd.local.serving import LocalServing, router
from tests.support import flows, ingest_app
from tests.support.serving_models import FEATURES, GOOD_ROWS, register_versions

T = TypeVar("T")
FEATURE_NAME_WARNING = "does not have valid feature names"


@pytest.fixture(scope="module")
def model(mlflow_uri: str) -> str:
    name = f"iris_{uuid.uuid4().hex[:8]}"
    register_versions(mlflow_uri, name)
    return name


@pytest.fixture(scope="module")
def expected(mlflow_uri: str, model: str) -> dict[str, np.ndarray[Any, Any]]:
    """What versions 1 and 2 themselves predict for GOOD_ROWS, loaded straight from MLflow."""
    import mlflow.pyfunc

    frame = pd.DataFrame(GOOD_ROWS, columns=FEATURES)
    # The registry is asked through a client of its own: mlflow.set_registry_uri would pin it process-wide
    # (and in MLFLOW_REGISTRY_URI for child processes), sending later tests' registrations to this server.
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    return {
        version: np.asarray(
            mlflow.pyfunc.load_model(client.get_model_version_download_uri(model, version)).predict(frame)
        )
        for version in ("1", "2")
    }


@asynccontextmanager
async def _serve(serving: LocalServing) -> AsyncIterator[str]:
    """Local serving's routes alone in an app on a free port; yields host:port."""
    app = FastAPI()
    app.include_router(router(serving))
    async with ingest_app.serving(app) as url:
        yield url.removeprefix("http://")


@pytest.fixture
async def served(tmp_path: Path, mlflow_uri: str, model: str) -> AsyncIterator[tuple[LocalServing, str]]:
    """Version 1 stable, version 2 a 25 % canary, on a real HTTP port."""
    serving = LocalServing(tmp_path / "home", mlflow_uri)
    await serving.promote(model, "1", "models:/1")
    await serving.set_canary(model, "2", "models:/2", 25)
    async with _serve(serving) as address:
        yield serving, address


async def _triton(address: str, use: Callable[[triton.InferenceServerClient], T]) -> T:
    """Run `use` with a tritonclient in a worker thread (it blocks; gevent keeps a client to one thread)."""

    def call() -> T:
        client = triton.InferenceServerClient(address, network_timeout=30.0)
        try:
            return use(client)
        finally:
            client.close()

    return await asyncio.to_thread(call)


@contextmanager
def _no_feature_name_warning() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
    named = [str(w.message) for w in seen if FEATURE_NAME_WARNING in str(w.message)]
    assert named == []


def _row_input(dtype: str, rows: np.ndarray[Any, Any], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(rows.shape), dtype)
    return tensor.set_data_from_numpy(rows, binary_data=binary)


async def test_server_is_live_ready_and_describes_itself(served: tuple[LocalServing, str]) -> None:
    _, address = served

    def check(client: triton.InferenceServerClient) -> tuple[bool, bool, dict[str, Any]]:
        return client.is_server_live(), client.is_server_ready(), client.get_server_metadata()

    live, ready, metadata = await _triton(address, check)
    assert (live, ready) == (True, True)
    assert metadata == {"name": "mlcd", "version": __version__, "extensions": ["binary_tensor_data"]}


async def test_model_metadata_lists_the_signatures_inputs_and_outputs(
    served: tuple[LocalServing, str], model: str
) -> None:
    _, address = served

    def check(client: triton.InferenceServerClient) -> tuple[dict[str, Any], dict[str, Any]]:
        return client.get_model_metadata(model), client.get_model_metadata(model, "2")

    routed, pinned = await _triton(address, check)
    columns = [{"name": name, "datatype": "FP64", "shape": [-1]} for name in FEATURES]
    assert routed["name"] == model and routed["versions"] == ["1", "2"] and routed["platform"] == "mlflow"
    assert routed["inputs"] == columns
    assert routed["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
    assert pinned["versions"] == ["2"] and pinned["inputs"] == columns


async def test_a_restarted_server_reports_its_models_ready_before_any_request(
    served: tuple[LocalServing, str], model: str, tmp_path: Path
) -> None:
    # MLflow unreachable after the restart: the revisions load from the copies under MLCD_HOME.
    restarted = LocalServing(tmp_path / "home", "http://127.0.0.1:9")
    async with _serve(restarted) as address:

        def readiness(client: triton.InferenceServerClient) -> tuple[bool, bool, bool]:
            return (
                client.is_server_ready(),
                client.is_model_ready(model),
                client.is_model_ready(model, "2"),
            )

        assert await _triton(address, readiness) == (False, False, False)
        stop = asyncio.Event()
        loader = asyncio.create_task(restarted.run(stop), name="local-serving")  # as the supervisor runs it
        try:

            async def all_ready() -> bool:
                return await _triton(address, readiness) == (True, True, True)

            await flows.eventually(all_ready, "the restarted server's models ready", 60)
        finally:
            stop.set()
            await loader
    assert restarted.figures(model, "1", 600)["requests"] == 0
    assert restarted.figures(model, "2", 600)["requests"] == 0


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
async def test_fp32_and_fp64_rows_predict_what_the_model_itself_predicts(
    served: tuple[LocalServing, str],
    model: str,
    expected: dict[str, np.ndarray[Any, Any]],
    dtype: str,
    binary: bool,
) -> None:
    _, address = served
    rows = np.asarray(GOOD_ROWS, dtype=np.float32 if dtype == "FP32" else np.float64)

    def infer(client: triton.InferenceServerClient) -> list[tuple[dict[str, Any], np.ndarray[Any, Any]]]:
        outputs = [triton.InferRequestedOutput("predict", binary_data=binary)]
        answers = []
        for version in ("1", "2", ""):  # "": routed to the stable or the canary revision
            result = client.infer(
                model, [_row_input(dtype, rows, binary=binary)], version, outputs=outputs, request_id="r-1"
            )
            answers.append((result.get_response(), result.as_numpy("predict")))
        return answers

    with _no_feature_name_warning():
        answers = await _triton(address, infer)
    for (response, predicted), version in zip(answers, ("1", "2", None), strict=True):
        assert response["model_name"] == model and response["id"] == "r-1"
        assert response["model_version"] == version or version is None
        np.testing.assert_array_equal(predicted, expected[response["model_version"]])
        assert predicted.dtype == np.int64 and predicted.shape == (len(GOOD_ROWS),)


async def test_one_tensor_per_column_and_int64_are_taken(
    served: tuple[LocalServing, str], model: str, expected: dict[str, np.ndarray[Any, Any]]
) -> None:
    _, address = served
    rows = np.asarray(GOOD_ROWS)
    whole = np.rint(rows).astype(np.int64)

    def infer(client: triton.InferenceServerClient) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        columns = [
            triton.InferInput(name, [len(rows)], "FP32").set_data_from_numpy(rows[:, i].astype(np.float32))
            for i, name in enumerate(FEATURES)
        ]
        by_column = client.infer(model, columns, "1").as_numpy("predict")
        integers = client.infer(model, [_row_input("INT64", whole, binary=True)], "1").as_numpy("predict")
        return by_column, integers

    with _no_feature_name_warning():
        by_column, integers = await _triton(address, infer)
    np.testing.assert_array_equal(by_column, expected["1"])
    import mlflow.pyfunc

    own = mlflow.pyfunc.load_model(f"models:/{model}/1").predict(
        pd.DataFrame(whole.astype(np.float64), columns=FEATURES)
    )
    np.testing.assert_array_equal(integers, np.asarray(own))


async def test_the_warning_check_sees_the_model_warn_when_given_unnamed_rows(
    served: tuple[LocalServing, str], model: str
) -> None:
    # The control for the checks above: the same model, handed a bare array in a worker thread as local
    # serving used to, warns, and the recorder catches it.
    serving, _ = served
    _, revision = await serving.revision(model, "1")
    raw = revision.model.get_raw_model()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        await asyncio.to_thread(raw.predict, np.asarray(GOOD_ROWS))
    assert any(FEATURE_NAME_WARNING in str(w.message) for w in seen)


async def test_errors_come_back_in_the_protocols_shape(served: tuple[LocalServing, str], model: str) -> None:
    _, address = served
    rows = np.asarray(GOOD_ROWS)[:, :3]

    def refusals(client: triton.InferenceServerClient) -> dict[str, InferenceServerException | bool]:
        found: dict[str, InferenceServerException | bool] = {"ready": client.is_model_ready("no_such_model")}
        for name, call in {
            "infer": lambda: client.infer("no_such_model", [_row_input("FP64", rows, binary=True)]),
            "metadata": lambda: client.get_model_metadata("no_such_model"),
            "shape": lambda: client.infer(model, [_row_input("FP64", rows, binary=True)]),
            "version": lambda: client.infer(model, [_row_input("FP64", rows, binary=True)], "7"),
        }.items():
            with pytest.raises(InferenceServerException) as raised:
                call()
            found[name] = raised.value
        return found

    found = await _triton(address, refusals)
    assert found.pop("ready") is False
    errors = {name: (e.status(), e.message()) for name, e in found.items() if isinstance(e, Exception)}
    assert errors == {
        "infer": ("404", "model no_such_model is not served here"),
        "metadata": ("404", "model no_such_model is not served here"),
        "shape": (
            "400",
            "the model takes 'sepal_length', 'sepal_width', 'petal_length', 'petal_width': one tensor of "
            "shape [n, 4] or one tensor per column; got 'input-0' [3, 3]",
        ),
        "version": ("404", f"model {model} does not serve version 7"),
    }

    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        wrong = await client.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1.0, 2.0]}]},
        )
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "input 'x': 2 values do not fit shape [2, 4]"}
