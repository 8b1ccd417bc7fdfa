"""A policy edit takes effect without a restart; a broken edit keeps the last good version in force."""

from __future__ import annotations

import os
from pathlib import Path

from mlcd.policy.book import PolicyBook

GOOD = """\
model: churn
promotion:
  rules:
    - name: floor
      expr: candidate.metrics.accuracy >= {floor}
"""


def _write(path: Path, text: str, stamp_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp_ns, stamp_ns))


def test_edit_reloads_and_broken_expression_keeps_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "churn.yaml"
    _write(path, GOOD.format(floor="0.80"), 1_000_000_000)
    book = PolicyBook(tmp_path)
    assert book.compiled("churn").rules[0].expression == "candidate.metrics.accuracy >= 0.80"

    _write(path, GOOD.format(floor="0.85"), 2_000_000_000)
    assert book.compiled("churn").rules[0].expression == "candidate.metrics.accuracy >= 0.85"

    _write(path, GOOD.format(floor="0.9 &&"), 3_000_000_000)
    assert book.compiled("churn").rules[0].expression == "candidate.metrics.accuracy >= 0.85"
    (problem,) = book.errors.values()
    assert "churn.yaml" in problem and "rule 'floor'" in problem and "CEL syntax error" in problem

    _write(path, GOOD.format(floor="0.9"), 4_000_000_000)
    assert book.compiled("churn").rules[0].expression == "candidate.metrics.accuracy >= 0.9"
    assert book.errors == {}


def test_defaults_edit_reaches_every_policy_and_a_broken_one_keeps_the_last_good(tmp_path: Path) -> None:
    _write(tmp_path / "churn.yaml", GOOD.format(floor="0.80"), 1_000_000_000)
    defaults = tmp_path / "defaults.yaml"
    _write(defaults, "rollout:\n  steps: [10, 100]\n", 1_000_000_000)
    book = PolicyBook(tmp_path)
    assert book.require("churn").rollout.steps == [10, 100]

    _write(defaults, "rollout:\n  steps: [25, 100]\n", 2_000_000_000)
    assert book.require("churn").rollout.steps == [25, 100]

    for stamp, broken, problem in (
        (3_000_000_000, "rollout: [unclosed\n", "defaults.yaml"),  # not YAML: no policy loses anything
        (4_000_000_000, "- a list\n", "the defaults file is a YAML mapping"),
        (5_000_000_000, "rollout:\n  steps: many\n", "churn.yaml"),  # valid YAML, invalid in the policy
    ):
        _write(defaults, broken, stamp)
        assert book.require("churn").rollout.steps == [25, 100], broken
        assert any(problem in text for text in book.errors.values()), book.errors

    _write(defaults, "rollout:\n  steps: [50, 100]\n", 6_000_000_000)
    assert book.require("churn").rollout.steps == [50, 100]
    assert book.errors == {}
