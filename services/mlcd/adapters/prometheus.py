"""The Analysis port: a revision's checks (the policy's `rollout.analysis`) over a window.

`PrometheusAnalysis` asks the Prometheus HTTP API, rendering each check with `mlcd.policy.analysis`
(the serving platform's built-in templates, or the check's own query); an empty result is no data,
so the check is inconclusive. `LocalAnalysis` reads local serving's own counters for the embedded
default without Prometheus.
"""

from __future__ import annotations

import math
from typing import Protocol

import httpx

from mlcd.adapters import trace_headers
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, ConfigError, PermanentError
from mlcd.policy import analysis
from mlcd.policy.schema import Check

# Templates over the metrics local serving exports; `{selector}` is the revision's label matcher and
# `{window}` a PromQL range such as 30s. A KServe installation passes its own (e.g. over
# revision_request_count / revision_request_latencies) to the constructor.
REQUESTS = "sum(increase(mlcd_serving_requests_total{{{selector}}}[{window}]))"
ERROR_RATE = (
    'sum(rate(mlcd_serving_requests_total{{{selector},outcome="error"}}[{window}]))'
    " / sum(rate(mlcd_serving_requests_total{{{selector}}}[{window}]))"
)
P95_LATENCY = (
    "histogram_quantile(0.95, sum by (le) "
    "(rate(mlcd_serving_request_seconds_bucket{{{selector}}}[{window}])))"
)


class PrometheusAnalysis:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        requests_query: str = REQUESTS,
        error_rate_query: str = ERROR_RATE,
        p95_query: str = P95_LATENCY,
        selector: str = 'model="{model}",version="{version}"',
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.queries = {
            "requests": requests_query,
            "error_rate": error_rate_query,
            "p95_latency_s": p95_query,
        }
        self.selector = selector

    async def measure(self, model: str, version: str, window_s: float) -> dict[str, float]:
        """The figures that have samples; one without (no traffic yet) is left out, not 0."""
        selector = self.selector.format(model=_quoted(model), version=_quoted(version))
        window = f"{max(1, math.ceil(window_s))}s"
        figures: dict[str, float] = {}
        async with httpx.AsyncClient(
            event_hooks=trace_headers.HTTPX_HOOKS, base_url=self.url, timeout=self.timeout_s
        ) as client:
            for name, template in self.queries.items():
                value = await self._scalar(client, template.format(selector=selector, window=window))
                if value is not None:
                    figures[name] = value
        return figures

    async def evaluate(
        self, checks: list[Check], platform: analysis.Platform, target: analysis.Target
    ) -> list[analysis.Outcome]:
        """Each check's value and verdict; no samples is inconclusive, never a pass."""
        outcomes: list[analysis.Outcome] = []
        async with httpx.AsyncClient(
            event_hooks=trace_headers.HTTPX_HOOKS, base_url=self.url, timeout=self.timeout_s
        ) as client:
            for check in checks:
                value = await self._scalar(client, analysis.promql(check, platform, target))
                outcomes.append(analysis.judge(check, value))
        return outcomes

    async def query(self, promql: str) -> float | None:
        async with httpx.AsyncClient(
            event_hooks=trace_headers.HTTPX_HOOKS, base_url=self.url, timeout=self.timeout_s
        ) as client:
            return await self._scalar(client, promql)

    async def _scalar(self, client: httpx.AsyncClient, promql: str) -> float | None:
        try:
            response = await client.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError as e:
            raise AdapterUnavailable(f"Prometheus at {self.url} did not answer: {e!r}") from e
        if response.status_code >= 500:
            raise AdapterUnavailable(
                f"Prometheus at {self.url} failed ({response.status_code}): {response.text}"
            )
        body = response.json()
        if response.status_code >= 400 or body.get("status") != "success":
            raise PermanentError(f"Prometheus rejected {promql!r}: {body.get('error', response.text)}")
        data = body["data"]
        if data.get("resultType") == "scalar":
            value = float(data["result"][1])
        elif not data["result"]:
            return None
        elif len(data["result"]) > 1:
            raise PermanentError(f"{promql!r} returned {len(data['result'])} series; a check needs one value")
        else:
            value = float(data["result"][0]["value"][1])
        return None if math.isnan(value) else value


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class RevisionFigures(Protocol):
    """What LocalAnalysis reads: local serving's `figures`."""

    def figures(self, model: str, version: str, window_s: float) -> dict[str, float]: ...


class LocalAnalysis:
    def __init__(self, source: RevisionFigures) -> None:
        self.source = source

    async def measure(self, model: str, version: str, window_s: float) -> dict[str, float]:
        return self.source.figures(model, version, window_s)

    async def evaluate(
        self, checks: list[Check], platform: analysis.Platform, target: analysis.Target
    ) -> list[analysis.Outcome]:
        """The built-in templates from local serving's counters; a PromQL query needs Prometheus."""
        figures = self.source.figures(target.model, target.version, target.window_s)
        requests = figures.get("requests", 0.0)
        outcomes: list[analysis.Outcome] = []
        for check in checks:
            if check.query is not None:
                outcomes.append(
                    analysis.Outcome(
                        check.name, None, None, f"{check.name}: a query needs MLCD_PROMETHEUS_URL"
                    )
                )
                continue
            value: float | None = {
                "request-count": requests,
                "request-success-rate": 1 - figures["error_rate"]
                if requests and "error_rate" in figures
                else None,
                "request-duration-p95": figures.get("p95_latency_s") if requests else None,
            }[check.template or ""]
            outcomes.append(analysis.judge(check, value))
        return outcomes


def build(settings: Settings) -> PrometheusAnalysis:
    """The Prometheus analysis of MLCD_PROMETHEUS_URL (the embedded default uses LocalAnalysis)."""
    if not settings.prometheus_url:
        raise ConfigError("MLCD_PROMETHEUS_URL is not set; use LocalAnalysis over local serving instead")
    return PrometheusAnalysis(settings.prometheus_url)
