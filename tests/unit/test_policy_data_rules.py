"""Rules over the candidate's data batch as the validator judged it: rows, failed expectations and per-column
figures; a verdict the rules cannot find; and `mlcd policy check` knowing the names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mlcd import events
from mlcd.policy import check, rules
from mlcd.policy.schema import Rule

URI = "s3://landing/wine_quality/batch-07.csv"


def _result(
    expectation: str, column: str | None, observed: Any, success: bool = True
) -> events.ExpectationResult:
    return events.ExpectationResult(
        expectation=expectation, column=column, success=success, observed=observed
    )


# What GE 1.x's SUMMARY results look like once the validator summarised them (validator/suite.py).
VALIDATED = events.DataValidated(
    model="wine_quality",
    uri=URI,
    rows=178,
    suite="wine_quality",
    result_uri="s3://landing/wine_quality/_validation/batch-07.csv.json",
    expectations=[
        _result("expect_table_row_count_to_be_between", None, 178),
        _result("expect_column_to_exist", "alcohol", None),
        _result("expect_column_mean_to_be_between", "alcohol", 13.91),
        _result("expect_column_max_to_be_between", "alcohol", 15.7),
        _result("expect_column_values_to_be_in_type_list", "alcohol", "float64"),
        _result(
            "expect_column_values_to_not_be_null",
            "alcohol",
            {"element_count": 178, "unexpected_count": 0, "unexpected_percent": 0.0},
        ),
        _result(
            "expect_column_values_to_be_between",
            "alcohol",
            {
                "element_count": 178,
                "unexpected_count": 4,
                "unexpected_percent": 2.25,
                "unexpected_examples": [16.2, 16.4],
            },
        ),
    ],
)
REJECTED = events.DataRejected(
    model="wine_quality",
    uri=URI,
    reason="2 of 60 expectations failed: ...",
    suite="wine_quality",
    failed=[
        _result("expect_column_to_exist", "proline", None, success=False),
        _result(
            "expect_column_values_to_not_be_null",
            "alcohol",
            {"element_count": 178, "unexpected_count": 12, "unexpected_percent": 6.74},
            success=False,
        ),
    ],
)


def _outcome(
    expression: str, verdict: events.DataValidated | events.DataRejected | None
) -> events.RuleOutcome:
    rule = rules.compile_rule(Rule(name="r", expr=expression))
    context = rules.Context(candidate={"version": "2", "metrics": {}}, data=rules.data_view(URI, verdict))
    (outcome,) = rules.evaluate([rule], context)
    return outcome


@pytest.mark.parametrize(
    ("expression", "verdict", "passed"),
    [
        ("data.rows >= 150", VALIDATED, True),
        ("data.rows >= 1000", VALIDATED, False),
        ("data.validated && size(data.failed_expectations) == 0", VALIDATED, True),
        ("data.expectations == 7", VALIDATED, True),
        ('data.columns["alcohol"].mean <= 13.5', VALIDATED, False),
        ('data.columns["alcohol"].max < 16.0 && data.columns["alcohol"].type == "float64"', VALIDATED, True),
        # the most rows any one value check of the column found out of place (4, not 0)
        ('data.columns["alcohol"].unexpected_count <= 2', VALIDATED, False),
        ('data.columns["alcohol"].unexpected_percent < 5.0', VALIDATED, True),
        ("data.suite == 'wine_quality' && data.uri.endsWith('batch-07.csv')", VALIDATED, True),
        ("data.validated", REJECTED, False),
        ("size(data.failed_expectations) == 0", REJECTED, False),
        ('data.failed_expectations.exists(e, e.column == "proline")', REJECTED, True),
        ('data.columns["alcohol"].unexpected_count > 10', REJECTED, True),
    ],
)
def test_rules_read_the_batchs_validation_result(
    expression: str, verdict: events.DataValidated | events.DataRejected, passed: bool
) -> None:
    outcome = _outcome(expression, verdict)

    assert outcome.error == ""
    assert outcome.passed is passed


def test_outcome_shows_each_figure_under_the_path_the_rule_wrote() -> None:
    outcome = _outcome('data.columns["alcohol"].mean <= 13.5 && data.rows > 100', VALIDATED)

    assert outcome.values == {'data.columns["alcohol"].mean': 13.91, "data.rows": 178}


def test_rows_of_a_rejected_batch_are_missing_and_the_rule_fails() -> None:
    outcome = _outcome("data.rows >= 100", REJECTED)

    assert not outcome.passed
    assert outcome.error == "missing: data.rows"


def test_a_batch_the_validator_never_judged_fails_the_rule_saying_so() -> None:
    outcome = _outcome('data.rows >= 100 && data.columns["alcohol"].mean < 14', None)

    assert not outcome.passed
    assert outcome.error == (
        f'missing: data.rows, data.columns["alcohol"].mean (no validation result for batch {URI})'
    )


def test_rules_on_the_uri_alone_still_hold_without_a_verdict() -> None:
    assert _outcome("data.uri.startsWith('s3://landing/')", None).passed


def test_a_failed_expectation_is_listed_with_what_was_seen() -> None:
    view = rules.data_view(URI, REJECTED)

    assert view["validated"] is False
    assert view["failed_expectations"][1] == {
        "expectation": "expect_column_values_to_not_be_null",
        "column": "alcohol",
        "observed": {"element_count": 178, "unexpected_count": 12, "unexpected_percent": 6.74},
        "details": "",
    }
    assert "rows" not in view


def test_unknown_data_field_is_named_with_the_known_ones() -> None:
    (problem,) = rules.problems("data.row_count > 100")

    assert problem.message == (
        "unknown field 'row_count' of data (known: columns, expectations, failed_expectations, rows, suite, "
        "uri, validated)"
    )


def test_policy_check_accepts_the_data_fields_and_points_at_a_misspelt_one(tmp_path: Path) -> None:
    policy = tmp_path / "wine_quality.yaml"
    policy.write_text(
        "model: wine_quality\n"
        "promotion:\n"
        "  rules:\n"
        "    - name: enough_rows\n"
        "      expr: data.rows >= 150 && size(data.failed_expectations) == 0\n"
        "    - name: alcohol_mean\n"
        "      expr: data.columns['alcohol'].mean <= 13.5\n"
        "    - name: typo\n"
        "      expr: data.colums['alcohol'].mean <= 13.5\n"
    )

    found = [str(p) for p in check.check_file(policy)]

    assert found == [
        f"{policy}:9: promotion.rules.2.expr: unknown field 'colums' of data (known: columns, expectations, "
        "failed_expectations, rows, suite, uri, validated)"
    ]


def test_policy_check_names_a_figure_the_models_suite_never_observes(tmp_path: Path) -> None:
    (tmp_path / "pipelines/wine_quality").mkdir(parents=True)
    (tmp_path / "pipelines/wine_quality/expectations.json").write_text(
        '{"name": "wine_quality", "expectations": ['
        '{"type": "expect_column_mean_to_be_between", "kwargs": {"column": "alcohol", "min_value": 8}},'
        '{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "alcohol"}},'
        '{"type": "expect_column_to_exist", "kwargs": {"column": "hue"}}]}'
    )
    (tmp_path / "policies").mkdir()
    policy = tmp_path / "policies/wine_quality.yaml"
    policy.write_text(
        "model: wine_quality\n"
        "data:\n"
        "  bucket: landing\n"
        "  prefix: wine_quality/\n"
        "  suite: pipelines/wine_quality/expectations.json\n"
        "promotion:\n"
        "  rules:\n"
        "    - name: fine\n"
        "      expr: data.columns['alcohol'].mean <= 13.5 && data.columns['alcohol'].unexpected_count == 0\n"
        "    - name: no_such_figure\n"
        "      expr: data.columns['alcohol'].max <= 15\n"
        "    - name: no_such_column\n"
        "      expr: data.columns['proline'].mean <= 1000 && data.columns['hue'] != null\n"
    )

    found = [str(p) for p in check.check_file(policy)]

    assert found == [
        f"{policy}:11: promotion.rules.1.expr: the suite pipelines/wine_quality/expectations.json observes "
        "no 'max' of column 'alcohol' (it gives mean, unexpected_count, unexpected_percent)",
        f"{policy}:13: promotion.rules.2.expr: the suite pipelines/wine_quality/expectations.json checks no "
        "column 'proline'",
    ]


def test_policy_check_of_the_shipped_example_rule_says_the_reference_suite_has_no_mean(
    tmp_path: Path,
) -> None:
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "pipelines/wine_quality").mkdir(parents=True)
    shutil.copy(repo / "pipelines/wine_quality/expectations.json", tmp_path / "pipelines/wine_quality")
    (tmp_path / "policies").mkdir()
    policy = tmp_path / "policies/wine_quality.yaml"
    shipped = (repo / "policies/wine_quality.yaml").read_text()
    policy.write_text(shipped.replace("    # - name", "    - name").replace("    #   expr", "      expr"))

    found = [p.message for p in check.check_file(policy)]

    assert found == [
        "promotion.rules.4.expr: the suite pipelines/wine_quality/expectations.json observes no 'mean' of "
        "column 'alcohol' (it gives type, unexpected_count, unexpected_percent)"
    ]
