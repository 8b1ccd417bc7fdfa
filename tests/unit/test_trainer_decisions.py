"""The trainer's pure decisions: admission, run names, parameters, pacing, outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from pydantic import SecretStr

from mlcd.adapters.objectstore import FolderObjectStore, MinioObjectStore
from mlcd.config import Settings
from mlcd.ports import Run
from mlcd.trainer import decisions
from mlcd.trainer.handlers import readable_uri


def test_a_trigger_starts_a_run_when_none_is_active() -> None:
    assert decisions.admit(None, "evt-1") is decisions.Admission.START


def test_a_trigger_during_a_run_is_queued_and_its_own_redelivery_is_a_duplicate() -> None:
    assert decisions.admit("evt-1", "evt-2") is decisions.Admission.QUEUE
    assert decisions.admit("evt-1", "evt-1") is decisions.Admission.DUPLICATE


def test_run_name_and_alias_are_stable_per_trigger() -> None:
    name = decisions.run_name("wine_quality", "evt-1")
    assert name == decisions.run_name("wine_quality", "evt-1") != decisions.run_name("wine_quality", "evt-2")
    alias = decisions.run_alias(name)
    assert alias == decisions.run_alias(name) and alias.startswith("mlcd-run-")
    assert alias.replace("-", "").isalnum()  # MLflow accepts it as an alias


def test_run_parameters_let_the_policy_tune_but_not_redirect_the_run_and_carry_no_secret() -> None:
    settings = Settings(
        s3_endpoint="minio:9000", s3_access_key=SecretStr("ak-123"), s3_secret_key=SecretStr("sk-456")
    )

    parameters = decisions.run_parameters(
        model="wine_quality",
        data_uri="s3://landing/wine_quality/b.csv",
        data_etag="f97c5d29941bfb1b2fdab0874906ab82",
        data_version_id="",
        commit="abc",
        pipeline_version="abc",
        name="mlcd-wine_quality-evt",
        tracking_uri="http://mlflow:5000",
        settings=settings,
        policy_parameters={"n_estimators": 80, "data_uri": "s3://elsewhere/x.csv"},
    )

    assert parameters["n_estimators"] == 80
    assert parameters["data_uri"] == "s3://landing/wine_quality/b.csv"
    assert parameters["data_etag"] == "f97c5d29941bfb1b2fdab0874906ab82"  # the bytes validated
    assert parameters["s3_endpoint"] == "http://minio:9000"
    assert parameters["run_name"] == "mlcd-wine_quality-evt"
    assert parameters["run_alias"] == decisions.run_alias("mlcd-wine_quality-evt")
    assert not {"ak-123", "sk-456"} & {str(value) for value in parameters.values()}


def test_an_s3_uri_splits_into_bucket_and_the_key_as_stored() -> None:
    assert decisions.s3_location("s3://landing/wine_quality/batch 01%2B.csv") == (
        "landing",
        "wine_quality/batch 01%2B.csv",
    )
    assert decisions.s3_location("file:///tmp/b.csv") is None
    assert decisions.s3_location("/tmp/b.csv") is None
    assert decisions.s3_location("s3://landing") is None


def test_the_trainer_hands_the_orchestrator_the_object_stores_uri_of_a_batch(tmp_path: Path) -> None:
    folder = FolderObjectStore(tmp_path / "objects")
    minio = MinioObjectStore("minio:9000", "ak", "sk")

    local = readable_uri("s3://landing/wine_quality/b 1.csv", folder)

    assert local == (tmp_path / "objects" / "landing" / "wine_quality" / "b 1.csv").resolve().as_uri()
    assert readable_uri("s3://landing/wine_quality/b.csv", minio) == "s3://landing/wine_quality/b.csv"
    assert readable_uri("file:///data/b.csv", folder) == "file:///data/b.csv"


def test_checks_slow_down_and_level_off() -> None:
    delays = [decisions.check_delay(n) for n in range(30)]
    assert delays[0] == decisions.FIRST_CHECK
    assert all(a <= b for a, b in pairwise(delays))
    assert delays[-1] == decisions.LONGEST_CHECK


def test_a_run_past_its_time_limit_is_timed_out() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    assert decisions.timed_out(started, started + timedelta(hours=3), timedelta(hours=2))
    assert not decisions.timed_out(started, started + timedelta(minutes=5), timedelta(hours=2))


def test_local_runner_outputs_give_the_version_and_metrics() -> None:
    outputs = {"model_version": 3.0, "metrics": '{"accuracy": 0.9, "f1_macro": 0.8}'}
    assert decisions.model_version(outputs) == "3"
    assert decisions.training_metrics(outputs) == {"accuracy": 0.9, "f1_macro": 0.8}
    assert decisions.model_version({}) is None
    assert decisions.training_metrics({"model_version": "2", "accuracy": 1}) == {"accuracy": 1.0}


def test_failure_reason_names_the_failing_task() -> None:
    assert (
        decisions.failure_reason(Run("r", "n", "FAILED", failed_task="train-model"))
        == "task train-model failed"
    )
    assert decisions.failure_reason(Run("r", "n", "CANCELED")) == "run n ended CANCELED"
