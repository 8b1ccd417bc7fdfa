"""Rollout arithmetic and analysis verdicts: plain functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlcd.policy import analysis
from mlcd.policy.schema import Thresholds


def next_step(steps: list[int], index: int) -> int | None:
    """Index of the step after `index`, or None when `index` is the last one."""
    return index + 1 if index + 1 < len(steps) else None


def is_final(steps: list[int], index: int) -> bool:
    return steps[index] >= 100


@dataclass(frozen=True)
class Verdict:
    """What the analysis of one step decided: go on, roll back, or wait for more traffic."""

    passed: bool
    conclusive: bool = True
    failures: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.failures)


def judge(
    figures: dict[str, float], thresholds: Thresholds, *, ready: bool, not_ready_why: str = ""
) -> Verdict:
    """Pass only if the revision is Ready and every figure is within the policy's thresholds.

    Fewer requests than `min_requests` is inconclusive: the step waits for another interval.
    """
    if not ready:
        return Verdict(False, failures=[f"revision not Ready{': ' + not_ready_why if not_ready_why else ''}"])
    if figures.get("requests", 0.0) < thresholds.min_requests:
        return Verdict(False, conclusive=False, failures=[f"only {figures.get('requests', 0.0):g} requests"])
    failures: list[str] = []
    error_rate = figures.get("error_rate", 0.0)
    if error_rate > thresholds.max_error_rate:
        failures.append(f"error rate {error_rate:.3f} above {thresholds.max_error_rate:g}")
    p95 = figures.get("p95_latency_s", 0.0)
    if p95 > thresholds.max_p95_latency_s:
        failures.append(f"p95 latency {p95:.3f}s above {thresholds.max_p95_latency_s:g}s")
    return Verdict(not failures, failures=failures)


@dataclass(frozen=True)
class AnalysisVerdict:
    """The checks of one step together: any failure rolls back; any no-data waits; else the step passes."""

    outcomes: list[analysis.Outcome]

    @property
    def failed(self) -> list[analysis.Outcome]:
        return [o for o in self.outcomes if o.passed is False]

    @property
    def conclusive(self) -> bool:
        return all(o.passed is not None for o in self.outcomes)

    @property
    def figures(self) -> dict[str, float]:
        return {o.name: o.value for o in self.outcomes if o.value is not None}

    @property
    def reason(self) -> str:
        shown = self.failed or [o for o in self.outcomes if o.passed is None]
        return "; ".join(o.reason for o in shown)


def verdict(outcomes: list[analysis.Outcome]) -> AnalysisVerdict:
    """No checks at all is no evidence: inconclusive, never a pass."""
    if not outcomes:
        return AnalysisVerdict([analysis.Outcome("analysis", None, None, "the rollout has no checks")])
    return AnalysisVerdict(list(outcomes))
