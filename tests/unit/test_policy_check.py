"""`mlcd policy check`: good files pass, broken ones name the file and line of every error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcd.commands.policy import app
from mlcd.policy.check import check_file

REPO = Path(__file__).resolve().parents[2]

BROKEN = """\
model: churn
approval:
  groupz: [oncall]
  count: 0
promotion:
  rules:
    - name: floor
      expr: candidate.metrics.accuracy >=
    - name: typo_identifier
      expr: candiate.metrics.accuracy > 0.5
    - name: typo_field
      expr: candidate.metricz.accuracy > 0.5
    - expr: candidate.metrics.accuracy > 0.5
rollout:
  steps: [10, 5]
"""


@pytest.mark.parametrize("name", ["wine_quality.yaml", "defaults.yaml"])
def test_shipped_policies_are_sound(name: str) -> None:
    assert check_file(REPO / "policies" / name) == []


def test_every_error_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "churn.yaml"
    path.write_text(BROKEN)
    found = [(p.line, p.message) for p in check_file(path)]
    assert found == [
        (3, "unknown field 'approval.groupz'"),
        (4, "approval.count: Input should be greater than or equal to 1"),
        (8, "promotion.rules.0.expr: CEL syntax error at column 28: unexpected '>='"),
        (
            10,
            "promotion.rules.1.expr: unknown identifier 'candiate' "
            "(known: candidate, champion, data, training)",
        ),
        (
            12,
            "promotion.rules.2.expr: unknown field 'metricz' of candidate "
            "(known: metrics, params, run_id, tags, version)",
        ),
        (13, "missing field 'promotion.rules.3.name'"),
        (15, "rollout.steps: Value error, steps must rise strictly and end at 100"),
    ]


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("model: m\npromotion:\n  rules: [\n    {name: a\n")
    (problem,) = check_file(path)
    assert problem.line >= 3
    assert problem.message.startswith("YAML error")


def test_command_prints_file_and_line_and_fails(tmp_path: Path) -> None:
    broken = tmp_path / "churn.yaml"
    broken.write_text(BROKEN)
    result = CliRunner().invoke(app, ["check", str(REPO / "policies" / "wine_quality.yaml"), str(broken)])
    assert result.exit_code == 1
    assert f"{broken}:8: promotion.rules.0.expr: CEL syntax error" in result.output
    assert "wine_quality" not in result.output


def test_command_says_ok_for_good_files() -> None:
    result = CliRunner().invoke(app, ["check", str(REPO / "policies" / "wine_quality.yaml")])
    assert result.exit_code == 0
    assert result.output.strip() == "ok"


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert "absent.yaml:0: cannot read" in result.output
