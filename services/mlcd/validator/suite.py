"""Expectation suites: load a model's suite, run it with Great Expectations, summarise what failed.

Great Expectations takes seconds to import; it is loaded on the first validation only, and `run` is
blocking (callers run it in a worker thread). The summaries are plain functions of GE's result JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcd.config import Settings
from mlcd.errors import PermanentError
from mlcd.events import ExpectationResult

if TYPE_CHECKING:
    import pandas as pd

_EXAMPLES = 5
_REASON_ITEMS = 6


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    spec: dict[str, Any]


def suite_path(settings: Settings, suite: str) -> Path:
    """The policy's suite path: as given when absolute, else relative to the repository root (the folder
    holding MLCD_PIPELINES_DIR: a checkout's root, /app in the image)."""
    path = Path(suite)
    return path if path.is_absolute() else settings.source_root / path


def load(path: Path) -> Suite:
    """Read a suite file (GE 1.x JSON: name, expectations); PermanentError when it is missing or broken."""
    try:
        spec = json.loads(path.read_text())
    except OSError as e:
        raise PermanentError(f"expectation suite {path} cannot be read: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise PermanentError(f"expectation suite {path} is not JSON: {e}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise PermanentError(f"expectation suite {path} has no `expectations` list")
    return Suite(name=str(spec.get("name") or path.stem), path=path, spec=spec)


def run(suite: Suite, frame: pd.DataFrame) -> dict[str, Any]:
    """Validate `frame` against `suite` (blocking); GE's result as plain JSON, tracebacks left out."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    try:
        expectations = gx.ExpectationSuite(
            name=suite.name, expectations=suite.spec["expectations"], meta=suite.spec.get("meta")
        )
    except Exception as e:  # GE raises assorted errors for an unknown expectation or a bad argument
        raise PermanentError(f"expectation suite {suite.path} is invalid: {e}") from e
    batch_definition = (
        context.data_sources.add_pandas(name="batches")
        .add_dataframe_asset(name="batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(expectations, result_format="SUMMARY")
    document: dict[str, Any] = plain(result.to_json_dict())  # type: ignore[no-untyped-call]
    return document


def plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tracebacks are dropped."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if k != "exception_traceback"}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise(result: dict[str, Any]) -> list[ExpectationResult]:
    """One entry per expectation: its type, column, outcome, the observed values and any error."""
    summary = []
    for item in result.get("results") or []:
        config = item.get("expectation_config") or {}
        kwargs = config.get("kwargs") or {}
        outcome = item.get("result") or {}
        summary.append(
            ExpectationResult(
                expectation=str(config.get("type", "unknown")),
                column=kwargs.get("column"),
                success=bool(item.get("success")),
                observed=_observed(outcome),
                details=_details(item, outcome),
            )
        )
    return summary


def _observed(outcome: dict[str, Any]) -> Any:
    if "observed_value" in outcome:
        return outcome["observed_value"]
    picked: dict[str, Any] = {k: outcome[k] for k in ("element_count", "unexpected_count") if k in outcome}
    if isinstance(outcome.get("unexpected_percent"), float):
        picked["unexpected_percent"] = round(outcome["unexpected_percent"], 2)
    if outcome.get("partial_unexpected_list"):
        picked["unexpected_examples"] = outcome["partial_unexpected_list"][:_EXAMPLES]
    return picked or None


def _details(item: dict[str, Any], outcome: dict[str, Any]) -> str:
    info = item.get("exception_info") or {}
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = sorted({str(e["exception_message"]) for e in entries if e.get("exception_message")})
    mismatched = (outcome.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):
        messages += [f"{kind}: {', '.join(map(str, names))}" for kind, names in mismatched.items() if names]
    return "; ".join(messages)


def failures(summary: list[ExpectationResult]) -> list[ExpectationResult]:
    """The failed expectations, table-level first; a missing column stands for every check on it."""
    failed = [e for e in summary if not e.success]
    missing = {e.column for e in failed if e.expectation == "expect_column_to_exist"}
    kept = [e for e in failed if e.column not in missing or e.expectation == "expect_column_to_exist"]
    return sorted(
        kept, key=lambda e: (e.column is not None, e.expectation != "expect_column_to_exist", e.column or "")
    )


def reason(summary: list[ExpectationResult]) -> str:
    """One sentence naming what failed and what was seen."""
    failed = [e for e in summary if not e.success]
    shown = failures(summary)
    listed = "; ".join(_describe(e) for e in shown[:_REASON_ITEMS])
    more = f"; and {len(shown) - _REASON_ITEMS} more" if len(shown) > _REASON_ITEMS else ""
    return f"{len(failed)} of {len(summary)} expectations failed: {listed}{more}"


def _describe(e: ExpectationResult) -> str:
    if e.expectation == "expect_column_to_exist":
        return f"column {e.column!r} is missing"
    what = e.expectation.removeprefix("expect_").replace("_", " ")
    subject = f"{e.column}: {what}" if e.column else what
    if isinstance(e.observed, dict) and "unexpected_count" in e.observed:
        examples = [str(x) for x in e.observed.get("unexpected_examples", []) if x is not None][:3]
        shown = f" (e.g. {', '.join(examples)})" if examples else ""
        return f"{subject} failed for {e.observed['unexpected_count']} rows{shown}"
    if e.details:
        return f"{subject} ({e.details})"
    observed = json.dumps(e.observed, default=str)
    return f"{subject}, observed {observed if len(observed) <= 80 else observed[:79] + '…'}"
