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
