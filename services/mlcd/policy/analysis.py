"""Analysis checks as policy: built-in PromQL templates per serving platform, placeholders, verdicts.

A rollout's checks (`rollout.analysis`, or the thresholds' built-ins) are rendered here into PromQL for
the revision under test. The templates follow what each platform exports: Knative's queue-proxy
(`revision_app_request_count`, `revision_app_request_latencies` in milliseconds) for KServe Serverless,
MLServer's own REST metrics for KServe Standard (RawDeployment) mode, Seldon Core 2's agent metrics
(`seldon_model_infer_total`, `seldon_model_infer_seconds_total`) for Seldon, and local serving's
`mlcd_serving_*` for the embedded default. Plain functions, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from mlcd.policy.schema import PLACEHOLDERS, Check

Platform = Literal["serverless", "raw", "local", "seldon"]

_QUEUE_PROXY = 'namespace_name="{namespace}",revision_name="{revision}"'
# MLServer's metrics carry no revision; the scrape (Prometheus' Kubernetes pod discovery, relabelled)
# adds the pod's namespace, InferenceService and revision (the predictor or the named canary).
_MLSERVER = 'namespace="{namespace}",inferenceservice="{service}",revision="{revision}",path=~".*/infer"'
_LOCAL = 'model="{model}",version="{version}"'
# Seldon Core 2's agent counts each inference per Model by its name (`model`; `model_internal` adds the
# Model's version), with the answer's `code` (HTTP status, or the gRPC code's name); the scrape adds the
# pod's namespace. Names from SeldonIO/seldon-core v2.6.0 scheduler/pkg/metrics/agent.go.
_SELDON = 'namespace="{namespace}",model="{revision}"'
_SELDON_CHAMPION = 'namespace="{namespace}",model="{service}"'


def _templates(requests: str, selector: str, failed: str, latency: str, scale: str) -> dict[str, str]:
    def rate(extra: str = "") -> str:
        return f"sum(rate({requests}{{{selector}{extra}}}[{{window}}]))"

    return {
        "request-count": f"sum(increase({requests}{{{selector}}}[{{window}}]))",
        # No successful series at all is a rate of 0, not an empty result: `or on() vector(0)`.
        "request-success-rate": f"({rate(',' + failed)} or on() vector(0)) / {rate()}",
        "request-duration-p95": (
            f"histogram_quantile(0.95, sum by (le) (rate({latency}{{{selector}}}[{{window}}]))){scale}"
        ),
    }


def _seldon_templates() -> dict[str, str]:
    def mean(selector: str) -> str:
        return (
            f"(sum(rate(seldon_model_infer_seconds_total{{{selector}}}[{{window}}]))"
            f" / sum(rate(seldon_model_infer_total{{{selector}}}[{{window}}])))"
        )

    # Success is a 2xx answer or gRPC OK: a 4xx is a request the model refused, which counts against it.
    return {
        "request-count": f"sum(increase(seldon_model_infer_total{{{_SELDON}}}[{{window}}]))",
        "request-success-rate": (
            f'(sum(rate(seldon_model_infer_total{{{_SELDON},code=~"2..|OK"}}[{{window}}])) or on() vector(0))'
            f" / sum(rate(seldon_model_infer_total{{{_SELDON}}}[{{window}}]))"
        ),
        "request-duration-mean": mean(_SELDON),
        "latency-ratio-to-champion": f"{mean(_SELDON)} / {mean(_SELDON_CHAMPION)}",
    }


TEMPLATES: dict[Platform, dict[str, str]] = {
    # Knative's queue-proxy: latencies in milliseconds, so the p95 is divided into seconds.
    "serverless": _templates(
        "revision_app_request_count",
        _QUEUE_PROXY,
        'response_code_class!="5xx"',
        "revision_app_request_latencies_bucket",
        " / 1000",
    ),
    "raw": _templates(
        "rest_server_requests_total",
        _MLSERVER,
        'status_code!~"5.."',
        "rest_server_request_duration_seconds_bucket",
        "",
    ),
    "seldon": _seldon_templates(),
    "local": _templates(
        "mlcd_serving_requests_total",
        _LOCAL,
        'outcome!="error"',
        "mlcd_serving_request_seconds_bucket",
        "",
    ),
}

# A placeholder is a bare name in braces, which PromQL never writes (its label matchers have operators).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Target:
    """The revision under analysis, as the placeholders name it."""

    namespace: str
    service: str
    revision: str
    model: str
    version: str
    window_s: float


@dataclass(frozen=True)
class Outcome:
    """One check's result: `passed` None means inconclusive (no data), never a pass."""

    name: str
    value: float | None
    passed: bool | None
    reason: str = ""


def window(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def placeholders_in(query: str) -> list[str]:
    """The names in `{…}` placeholders of a query."""
    return _PLACEHOLDER.findall(query)


def query_problems(query: str) -> list[str]:
    """Why a check's query cannot be rendered: placeholders that are not known."""
    unknown = sorted({name for name in placeholders_in(query) if name not in PLACEHOLDERS})
    if unknown:
        return [f"unknown placeholder(s) {', '.join(unknown)}; known: {', '.join(PLACEHOLDERS)}"]
    return []


def fill(query: str, target: Target, window_s: float) -> str:
    """The query with each placeholder replaced; label values are quoted for PromQL strings."""
    values = {
        "namespace": _quoted(target.namespace),
        "service": _quoted(target.service),
        "revision": _quoted(target.revision),
        "model": _quoted(target.model),
        "version": _quoted(target.version),
        "window": window(window_s),
    }
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), query)


def promql(check: Check, platform: Platform, target: Target) -> str:
    """The check's PromQL for `target`: its own query, or the platform's built-in template."""
    template = check.query if check.query is not None else TEMPLATES[platform][check.template or ""]
    seconds = check.window.total_seconds() if check.window is not None else target.window_s
    return fill(template, target, seconds)


def judge(check: Check, value: float | None) -> Outcome:
    """Within [min, max] passes; no value (an empty result, NaN) is inconclusive.

    A `request-count` check below its minimum is inconclusive too: too little traffic to tell.
    """
    if value is None or math.isnan(value):
        return Outcome(check.name, None, None, f"{check.name}: no data")
    if check.min is not None and value < check.min:
        if check.template == "request-count":
            return Outcome(
                check.name, value, None, f"{check.name}: only {value:g} requests (< {check.min:g})"
            )
        return Outcome(check.name, value, False, f"{check.name} {value:.4g} below {check.min:g}")
    if check.max is not None and value > check.max:
        return Outcome(check.name, value, False, f"{check.name} {value:.4g} above {check.max:g}")
    return Outcome(check.name, value, True)
