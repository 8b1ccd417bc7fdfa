"""Run a property over generated inputs and say how many were tried (for the bad-input report).

Each run prints `bad input: <what>: N inputs tried`; `pytest -rP` (or `-s`) shows the lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T = TypeVar("T")


def explore(what: str, inputs: st.SearchStrategy[T], check: Callable[[T], None], max_examples: int) -> int:
    """Run `check` on up to `max_examples` inputs (shrinking a failure as usual); returns how many ran."""
    tried = 0

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(inputs)
    def run(value: T) -> None:
        nonlocal tried
        tried += 1
        check(value)

    run()
    print(f"bad input: {what}: {tried} inputs tried")
    return tried
