"""The canary chart's SVG and the on-call API's links out, without I/O."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from mlcd import canary_chart, oncall_api
from mlcd.store.rollouts import Measurement, Rollout

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _rollout(state: str = "running", step_index: int = 1) -> Rollout:
    return Rollout(
        id=7,
        model="wine_quality",
        version="8",
        artifact_uri="s3://models/8",
        previous_version="7",
        previous_artifact_uri="s3://models/7",
        steps=[10, 50, 100],
        step_index=step_index,
        state=state,
        next_analysis_at=None,
        reason="",
        figures={},
        created_at=START,
        updated_at=START + timedelta(seconds=90),
    )


def _measured(check: str, value: float | None, passed: bool | None, seconds: int, step: int) -> Measurement:
    return Measurement(
        check,
        value,
        passed,
        min=0.95,
        step_index=step,
        traffic_percent=[10, 50, 100][step],
        measured_at=START + timedelta(seconds=seconds),
        rollout_id=7,
    )


def test_each_measurement_is_a_point_coloured_by_its_verdict_against_its_bound() -> None:
    points = [
        _measured("success-rate", None, None, 30, 0),
        _measured("success-rate", 0.99, True, 60, 0),
        _measured("success-rate", 0.90, False, 90, 1),
    ]
    root = ET.fromstring(canary_chart.svg(_rollout("rolled_back"), points))

    circles = root.findall(f".//{SVG}circle")
    verdicts = [c.get("class") for c in circles]
    assert verdicts == ["measurement inconclusive", "measurement pass", "measurement fail"]
    bound = root.find(f".//{SVG}line[@data-bound='min']")
    assert bound is not None
    passed_y, failed_y = float(circles[1].get("cy") or 0), float(circles[2].get("cy") or 0)
    assert passed_y < float(bound.get("y1") or 0) < failed_y  # 0.99 above the 0.95 line, 0.90 below it
    assert [float(c.get("cx") or 0) for c in circles] == sorted(float(c.get("cx") or 0) for c in circles)
    assert root.find(f".//{SVG}line[@class='step-change']") is not None  # where traffic moved to 50 %


def test_traffic_bars_fill_the_steps_reached_and_outline_the_rest() -> None:
    root = ET.fromstring(canary_chart.svg(_rollout("running", 1), []))
    bars = root.findall(f".//{SVG}rect[@data-percent]")
    assert [(b.get("data-percent"), "reached" in (b.get("class") or "")) for b in bars] == [
        ("10", True),
        ("50", True),
        ("100", False),
    ]
    assert "no analysis measured yet" in "".join(root.itertext())


def test_text_from_a_policy_is_escaped_not_markup() -> None:
    name = '<script>alert("x")</script>'
    root = ET.fromstring(canary_chart.svg(_rollout(), [_measured(name, 1.0, True, 10, 0)]))
    assert root.find(f".//{SVG}script") is None
    assert name in "".join(root.itertext())


def test_links_out_drop_credentials_and_name_no_system_mlcd_does_not_know() -> None:
    links = oncall_api.Links.of("https://user:secret@mlflow.example.com:5000/", "sqlite:///mlflow.db", None)
    assert links.model_version("wine quality", "3") == (
        "https://mlflow.example.com:5000/#/models/wine%20quality/versions/3"
    )
    assert links.run("abc") is None and links.commit("ml/wine", "4fae") is None
    kfp = oncall_api.Links.of(None, "http://kfp.example.com/pipeline", "https://gitlab.example.com")
    assert kfp.run("r-1") == "http://kfp.example.com/pipeline/#/runs/details/r-1"
    assert kfp.commit("ml/wine", "4fae") == "https://gitlab.example.com/ml/wine/-/commit/4fae"


def test_a_batch_links_to_its_object_on_the_s3_endpoint_only_when_mlcd_knows_one() -> None:
    minio = oncall_api.Links.of(None, None, None, "http://key:secret@minio.example.com:9000")
    assert minio.object("s3://landing/wine quality/b?1.csv") == (
        "http://minio.example.com:9000/landing/wine%20quality/b%3F1.csv"
    )
    assert minio.object("file:///tmp/batch.csv") is None and minio.object("s3://landing") is None
    assert oncall_api.Links.of(None, None, None).object("s3://landing/b.csv") is None
