"""Reading batches and summarising suite results: the validator's decisions without any I/O."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from mlcd.config import Settings
from mlcd.events import ExpectationResult
from mlcd.policy.schema import DataSource
from mlcd.validator import batches, suite

DATA = DataSource(bucket="landing", prefix="wine_quality/", suite="s.json")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("wine_quality/b.csv", "csv"),
        ("wine_quality/B.CSV", "csv"),
        ("wine_quality/b.parquet", "parquet"),
        ("wine_quality/b.pq", "parquet"),
        ("wine_quality/b.json", None),
        ("wine_quality/csv", None),
    ],
)
def test_format_comes_from_the_key_suffix(key: str, expected: str | None) -> None:
    assert batches.format_of(key) == expected


def test_csv_batch_parses_into_rows_and_columns() -> None:
    batch = batches.parse(b"\xef\xbb\xbfalcohol,target\n13.2,1\n12.1,0\n", "csv")

    assert list(batch.frame.columns) == ["alcohol", "target"]
    assert len(batch.frame) == 2


def test_parquet_batch_parses() -> None:
    buffer = io.BytesIO()
    pd.DataFrame({"alcohol": [13.2], "target": [1]}).to_parquet(buffer)

    assert len(batches.parse(buffer.getvalue(), "parquet").frame) == 1


@pytest.mark.parametrize(
    ("raw", "fmt", "reason"),
    [
        (b"", "csv", "the file is empty"),
        (b"a,b\n", "csv", "has a header (2 columns) but no rows"),
        (b"PAR1\x00\x00PAR1", "csv", "named .csv but holds Parquet data"),
        (b"a,b\n\xff\xfe\n", "csv", "not a CSV file: byte 4 is not UTF-8 text"),
        (b"a,b\n1\x002\n", "csv", "binary data"),
        (b'a,b\n1,"2\n', "csv", "unparsable CSV"),
        (b"a,b\n1,2\n", "parquet", "PAR1 markers are missing"),
    ],
)
def test_unreadable_batches_say_why(raw: bytes, fmt: batches.Format, reason: str) -> None:
    with pytest.raises(batches.Unreadable, match=re.escape(reason)):
        batches.parse(raw, fmt)


def test_result_is_kept_under_the_results_prefix_beside_the_batch() -> None:
    assert batches.results_key(DATA, "wine_quality/2026/b.csv") == "wine_quality/_validation/2026/b.csv.json"
    assert not DATA.covers("landing", batches.results_key(DATA, "wine_quality/b.csv"))


def test_relative_suite_paths_start_at_the_repository_root() -> None:
    settings = Settings(policies_dir=Path("/etc/mlcd/policies"), pipelines_dir=Path("/srv/repo/pipelines"))

    assert suite.suite_path(settings, "pipelines/w/expectations.json") == Path(
        "/srv/repo/pipelines/w/expectations.json"
    )
    assert suite.suite_path(settings, "/etc/suites/w.json") == Path("/etc/suites/w.json")


GE_RESULT = {
    "success": False,
    "results": [
        {
            "success": True,
            "expectation_config": {
                "type": "expect_table_row_count_to_be_between",
                "kwargs": {"min_value": 10},
            },
            "result": {"observed_value": 178},
            "exception_info": {"raised_exception": False, "exception_message": None},
        },
        {
            "success": False,
            "expectation_config": {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "proline"},
            },
            "result": {},
            "exception_info": {
                "metric-id": {"exception_message": "column proline not found", "exception_traceback": "…"}
            },
        },
        {
            "success": False,
            "expectation_config": {"type": "expect_column_to_exist", "kwargs": {"column": "proline"}},
            "result": {},
            "exception_info": {"raised_exception": False},
        },
        {
            "success": False,
            "expectation_config": {"type": "expect_column_values_to_be_between", "kwargs": {"column": "hue"}},
            "result": {
                "element_count": 178,
                "unexpected_count": 5,
                "unexpected_percent": 2.808988764,
                "partial_unexpected_list": [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
            },
            "exception_info": {"raised_exception": False},
        },
    ],
}


def test_summary_keeps_observed_values_and_errors() -> None:
    summary = suite.summarise(GE_RESULT)

    assert [e.success for e in summary] == [True, False, False, False]
    assert summary[0].observed == 178
    assert summary[1].details == "column proline not found"
    assert summary[3].observed == {
        "element_count": 178,
        "unexpected_count": 5,
        "unexpected_percent": 2.81,
        "unexpected_examples": [-1.0] * 5,
    }


def test_a_missing_column_stands_for_every_failed_check_on_it() -> None:
    failed = suite.failures(suite.summarise(GE_RESULT))

    assert [(e.expectation, e.column) for e in failed] == [
        ("expect_column_to_exist", "proline"),
        ("expect_column_values_to_be_between", "hue"),
    ]


def test_reason_counts_the_failures_and_shows_what_was_seen() -> None:
    reason = suite.reason(suite.summarise(GE_RESULT))

    assert reason == (
        "3 of 4 expectations failed: column 'proline' is missing; "
        "hue: column values to be between failed for 5 rows (e.g. -1.0, -1.0, -1.0)"
    )


def test_reason_shortens_a_long_list() -> None:
    many = [
        ExpectationResult(expectation="expect_x", column=f"c{i}", success=False, observed=i) for i in range(9)
    ]

    assert suite.reason(many).endswith("; and 3 more")


def test_plain_json_has_no_nan_and_no_tracebacks() -> None:
    cleaned = suite.plain(
        {"a": [math.nan, 1.5, math.inf], "exception_traceback": "long", "b": {"c": -math.inf}}
    )

    assert cleaned == {"a": [None, 1.5, None], "b": {"c": None}}
