"""`mlcd policy check`: a policy file's schema and every CEL expression, each error with its line.

The values are checked as the services read them (PyYAML); ruamel.yaml's round-trip loader keeps the line
of every key and value, so an error in a nested field or an expression points at the line to edit.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

from mlcd.policy import analysis, rules
from mlcd.policy.book import DEFAULTS_FILE
from mlcd.policy.schema import Policy

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class FileProblem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        # One printable line whatever the file is called: bytes that are not UTF-8 become U+FFFD, a
        # newline or another control character its escape.
        shown = str(self.path).encode(errors="surrogatepass").decode(errors="replace")
        if not shown.isprintable():
            shown = repr(shown)[1:-1]
        return f"{shown}:{self.line}: {self.message}"


def check_file(path: Path) -> list[FileProblem]:
    """Every problem of one policy file, in line order; empty when the file is sound."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return [FileProblem(path, 0, f"cannot read: {e.strerror or e}")]
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return [FileProblem(path, line, f"not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}")]
    return sorted(check_text(text, path), key=lambda p: p.line)


def check_text(text: str, path: Path) -> list[FileProblem]:
    try:
        document = YAML(typ="rt").load(io.StringIO(text))
        # The values as the services read them (PyYAML, YAML 1.1: `no` is false, `1:30` is 90 seconds);
        # the round-trip document only supplies the lines.
        values = yaml.safe_load(text)
    except (MarkedYAMLError, yaml.MarkedYAMLError) as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 1
        return [FileProblem(path, line, f"YAML error: {e.problem or e}")]
    except (ReaderError, yaml.reader.ReaderError) as e:  # a character YAML does not allow (NUL, controls)
        line = text[: e.position].count("\n") + 1
        return [FileProblem(path, line, f"YAML error: {e.reason} (character {e.character!r})")]
    except RecursionError:
        return [FileProblem(path, 1, "YAML error: nested too deeply to read")]
    if document is None:
        document, values = CommentedMap(), {}
    if not isinstance(document, CommentedMap) or not isinstance(values, dict):
        return [FileProblem(path, 1, "a policy file is a YAML mapping")]
    if path.name == DEFAULTS_FILE:
        values.setdefault("model", "defaults")
    found = [_schema_problem(document, error, path) for error in _schema_errors(values)]
    found.extend(_expression_problems(document, path))
    found.extend(_figure_problems(document, values, path))
    found.extend(_query_problems(document, path))
    return found


def _schema_errors(plain: dict[str, Any]) -> list[Any]:
    try:
        Policy.model_validate(plain)
    except ValidationError as e:
        return list(e.errors())
    return []


def _schema_problem(document: CommentedMap, error: Any, path: Path) -> FileProblem:
    location: Location = tuple(error["loc"])
    dotted = ".".join(str(part) for part in location) or "policy"
    if error["type"] == "extra_forbidden":
        message = f"unknown field {dotted!r}"
    elif error["type"] == "missing":
        message = f"missing field {dotted!r}"
    else:
        message = f"{dotted}: {error['msg']}"
    return FileProblem(path, _line(document, location), message)


def _expression_problems(document: CommentedMap, path: Path) -> list[FileProblem]:
    found: list[FileProblem] = []
    for location, expression in _expressions(document):
        for problem in rules.problems(expression):
            found.append(
                FileProblem(
                    path, _line(document, location), f"{'.'.join(map(str, location))}: {problem.message}"
                )
            )
    return found


def _figure_problems(document: CommentedMap, values: dict[str, Any], path: Path) -> list[FileProblem]:
    """Each `data.columns["NAME"].figure` a rule reads that the model's expectation suite never observes:
    it would be missing for every batch, and the rule would fail every candidate. Only when the suite
    file is found (as given, or under the repository root the policies folder sits in)."""
    data = values.get("data")
    named = data.get("suite") if isinstance(data, dict) else None
    suite = _suite_file(str(named), path) if isinstance(named, str) and named else None
    figures = _suite_figures(suite) if suite is not None else None
    if figures is None:
        return []
    found: list[FileProblem] = []
    for location, expression in _expressions(document):
        where = ".".join(map(str, location))
        for column, figure in rules.column_references(expression):
            if column not in figures:
                message = f"{where}: the suite {named} checks no column {column!r}"
            elif figure is not None and figure not in figures[column]:
                given = ", ".join(sorted(figures[column])) or "no figures"
                message = f"{where}: the suite {named} observes no {figure!r} of column {column!r}"
                message += f" (it gives {given})"
            else:
                continue
            found.append(FileProblem(path, _line(document, location), message))
    return found


def _suite_file(named: str, policy: Path) -> Path | None:
    given = Path(named)
    candidates = (
        [given] if given.is_absolute() else [policy.resolve().parent.parent / given, Path.cwd() / given]
    )
    return next((c for c in candidates if c.is_file()), None)


def _suite_figures(suite: Path) -> dict[str, set[str]] | None:
    """Column → the figures its expectations give rules; None when the file is not a readable suite."""
    try:
        spec = json.loads(suite.read_text())
    except (OSError, ValueError):
        return None
    expectations = spec.get("expectations") if isinstance(spec, dict) else None
    if not isinstance(expectations, list):
        return None
    figures: dict[str, set[str]] = {}
    for item in expectations:
        if not isinstance(item, dict):
            continue
        kwargs = item.get("kwargs")
        column = kwargs.get("column") if isinstance(kwargs, dict) else None
        if isinstance(column, str):
            kind = str(item.get("type") or item.get("expectation_type") or "")
            figures.setdefault(column, set()).update(rules.column_figures(kind))
    return figures


def _query_problems(document: CommentedMap, path: Path) -> list[FileProblem]:
    """Each analysis query's placeholders, and its PromQL once they are filled in."""
    found: list[FileProblem] = []
    rollout = document.get("rollout")
    checks = rollout.get("analysis") if isinstance(rollout, CommentedMap) else None
    if not isinstance(checks, CommentedSeq):
        return found
    for index, check in enumerate(checks):
        if not isinstance(check, CommentedMap) or not isinstance(check.get("query"), str):
            continue
        location: Location = ("rollout", "analysis", index, "query")
        problems = analysis.query_problems(str(check["query"]))
        if not problems:
            problems = _promql_problems(str(check["query"]))
        found.extend(
            FileProblem(path, _line(document, location), f"{'.'.join(map(str, location))}: {problem}")
            for problem in problems
        )
    return found


def _promql_problems(query: str) -> list[str]:
    try:
        import promql_parser
    except ImportError:  # the parser is optional: placeholders are still checked
        return []
    example = analysis.Target("ns", "svc", "svc-predictor-00001", "model", "1", 30.0)
    filled = analysis.fill(query, example, 30.0)
    try:
        promql_parser.parse(filled)
    except ValueError as e:
        return [f"not PromQL: {e}"]
    return []


def _expressions(document: CommentedMap) -> list[tuple[Location, str]]:
    """(location, text) of every CEL expression in the file: promotion rules and approval.when."""
    found: list[tuple[Location, str]] = []
    promotion = document.get("promotion")
    if isinstance(promotion, CommentedMap):
        for section in ("rules", "first_model_rules"):
            items = promotion.get(section)
            if not isinstance(items, CommentedSeq):
                continue
            for index, item in enumerate(items):
                if isinstance(item, CommentedMap) and isinstance(item.get("expr"), str):
                    found.append((("promotion", section, index, "expr"), str(item["expr"])))
    approval = document.get("approval")
    if isinstance(approval, CommentedMap) and isinstance(approval.get("when"), str):
        found.append((("approval", "when"), str(approval["when"])))
    return found


def _line(document: CommentedMap, location: Sequence[str | int]) -> int:
    """The 1-based line of the deepest node of `location` the document has (the key's line for a map)."""
    node: Any = document
    line = 1
    for part in location:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            if isinstance(node, CommentedMap | CommentedSeq) and line == 1 and node.lc.line is not None:
                line = node.lc.line + 1
            break
    return line
