"""Policy files under bad input: `mlcd policy check` answers a list of problems, each with its file and
line, for any text or bytes; never an exception. A file it passes is one the services load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import strategies as st

from mlcd.errors import ConfigError
from mlcd.policy import book, rules
from mlcd.policy.check import FileProblem, check_file, check_text
from tests.support import mutations
from tests.support.inputs_tried import explore

REPO = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted((REPO / "policies").glob("*.yaml"))
DEFAULTS = yaml.safe_load((REPO / "policies" / book.DEFAULTS_FILE).read_text())
CANDIDATE = rules.Context(candidate={"version": "2", "metrics": {"accuracy": 0.9}}, champion=None)
rules.problems("true")  # loading cel-python raises the recursion limit: not in the middle of a test

CEL_TOKENS = st.sampled_from(
    ["candidate", "champion", "data", "training", "candiate", ".", "metrics", "accuracy", "version",
     ">=", "==", "!=", "0.8", "1e999", "9" * 30, "0x", "(", ")", "[", "]", "{", "}", "&&", "||", "!",
     "?", ":", "in", "null", '"', "'", "b'", 'r"', "\\", "size(", "has(", ".exists(x,", ".all(", "x",
     ",", " ", "\n", "\x00", "\ud800", "&", "|", "=", "#", "🦀", "int(", ")" * 5]
)  # fmt: skip
CEL = st.lists(CEL_TOKENS, max_size=25).map("".join)
# Deep and long expressions, sized to get past the parser's and the evaluator's recursion limits (too slow
# to parse for Hypothesis to try hundreds of them).
DEEP_CEL = [
    "(" * 400 + "1" + ")" * 400,
    "(" * 1200 + "1" + ")" * 1200,
    "!" * 1200 + "true",
    " && ".join(["candidate.metrics.accuracy > 0.5"] * 1000),
    "[" * 1200 + "]" * 1200 + " == []",
]
YAML_SNIPPETS = st.sampled_from(
    ["\t", ": ", "- ", "&a ", "*a", "*missing", "<<: *a\n", "!!python/object:os.system ", "!!binary x", "? ",
     "{", "[", "'", '"', "\x00", "\x07", "\ud800", "\ufeff", "%YAML 1.1\n---\n", "---\n", "...\n", "#", "|",
     ">", "\r", "\u2028", "yes", "no", "on", "0o17", "1:30", "~", ".inf", ".nan", "99999999999999999999d"]
)  # fmt: skip

YAML_1_1_SCALARS = st.sampled_from(
    ["no", "yes", "on", "off", "No", "ON", "y", "n", "1:30", "010", "0o17", "0x1F", "1_000", "+1", "~",
     ".inf", ".NaN", "2026-11-23", "1e3"]
)  # fmt: skip


def _documents() -> list[Any]:
    return [yaml.safe_load(path.read_text()) for path in POLICY_FILES]


@st.composite
def _with_odd_rules(draw: st.DrawFn, document: Any) -> Any:
    changed = draw(mutations.near_valid(document, max_changes=2))
    if isinstance(changed, dict) and draw(st.booleans()):
        exprs = draw(st.lists(CEL, min_size=1, max_size=3))
        changed["promotion"] = {"rules": [{"name": f"r{i}", "expr": e} for i, e in enumerate(exprs)]}
        if draw(st.booleans()):
            changed["approval"] = {"when": draw(CEL)}
    return changed


def _yaml(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


@st.composite
def _plain_scalar_swapped(draw: st.DrawFn, valid: str) -> str:
    """One `key: value` line's value replaced by a plain scalar YAML 1.1 and 1.2 read differently."""
    lines = valid.splitlines(keepends=True)
    places = [i for i, line in enumerate(lines) if re.match(r"^\s*[\w-]+: \S", line)]
    at = draw(st.sampled_from(places))
    key = lines[at].split(": ", 1)[0]
    return "".join([*lines[:at], f"{key}: {draw(YAML_1_1_SCALARS)}\n", *lines[at + 1 :]])


@st.composite
def policy_texts(draw: st.DrawFn) -> tuple[str, str]:
    """(file name, text): mutated policies, broken CEL, YAML snippets spliced in, truncations, anything."""
    name = draw(st.sampled_from(["churn.yaml", book.DEFAULTS_FILE]))
    document = draw(st.sampled_from(_documents()))
    valid = _yaml(document)
    text = draw(
        st.one_of(
            _with_odd_rules(document).map(_yaml),
            _with_odd_rules(document).map(_yaml),
            st.tuples(st.integers(0, len(valid)), st.lists(YAML_SNIPPETS, min_size=1, max_size=3)).map(
                lambda at: valid[: at[0]] + "".join(at[1]) + valid[at[0] :]
            ),
            st.integers(0, len(valid)).map(lambda cut: valid[:cut]),
            _plain_scalar_swapped(valid),
            mutations.ANY_JSON.map(_yaml),
            st.text(mutations.ANY_CHAR, max_size=200),
        )
    )
    return name, text


def _sound(problems: list[FileProblem], path: Path, text: str) -> None:
    assert isinstance(problems, list)
    last_line = len(text.splitlines()) + 1
    for problem in problems:
        assert problem.path == path
        assert 1 <= problem.line <= last_line, problem
        assert problem.message.strip()


def _checked(path: Path, text: str) -> None:
    problems = check_text(text, path)
    _sound(problems, path, text)
    if not problems and path.name != book.DEFAULTS_FILE:
        # What `policy check` passes, the services must load, compile and evaluate.
        path.write_text(text)
        try:
            compiled = rules.compile_policy(book.load_file(path, DEFAULTS))
        except ConfigError as e:
            raise AssertionError(f"policy check passed a file the services refuse: {e}") from e
        for outcome in rules.evaluate(compiled.rules_for(has_champion=False), CANDIDATE):
            assert outcome.passed or outcome.error or outcome.values is not None


def test_any_policy_text_gets_a_list_of_problems_with_lines(tmp_path: Path) -> None:
    def check(named: tuple[str, str]) -> None:
        _checked(tmp_path / named[0], named[1])

    assert explore("policy check (text)", policy_texts(), check, 200) >= 100


@pytest.mark.parametrize("expression", DEEP_CEL, ids=lambda e: f"{e[:8]}..{len(e)}")
def test_deep_expressions_get_a_problem_or_evaluate(tmp_path: Path, expression: str) -> None:
    _checked(
        tmp_path / "churn.yaml",
        _yaml({"model": "churn", "promotion": {"rules": [{"name": "r", "expr": expression}]}}),
    )


def test_any_policy_file_bytes_get_a_list_of_problems(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    valid = POLICY_FILES[-1].read_bytes()
    contents = st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=4)).map(
            lambda at: valid[: at[0]] + at[1] + valid[at[0] :]
        ),
        st.sampled_from([valid.decode().encode("utf-16"), b"\xef\xbb\xbf" + valid, b"\xff\xfe\x00"]),
    )

    def check(content: bytes) -> None:
        path.write_bytes(content)
        problems = check_file(path)
        assert isinstance(problems, list)
        for problem in problems:
            assert problem.path == path and problem.line >= 0 and problem.message.strip()

    assert explore("policy check (file bytes)", contents, check, 150) >= 50
