"""The Analysis port: a model revision's error rate, p95 latency and request count over a window.

`PrometheusAnalysis` asks the Prometheus HTTP API (PromQL over the per-revision serving metrics);
`LocalAnalysis` reads local serving's own counters, for the embedded default without Prometheus.
"""

from __future__ import annotations

import math
from typing import Protocol

import httpx

from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, ConfigError, PermanentError

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
        """A figure without samples (no traffic yet) counts as 0."""
        selector = self.selector.format(model=_quoted(model), version=_quoted(version))
        window = f"{max(1, math.ceil(window_s))}s"
        figures: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as client:
            for name, template in self.queries.items():
                figures[name] = await self._scalar(client, template.format(selector=selector, window=window))
        return figures

    async def query(self, promql: str) -> float:
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as client:
            return await self._scalar(client, promql)

    async def _scalar(self, client: httpx.AsyncClient, promql: str) -> float:
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
        result = body["data"]["result"]
        if not result:
            return 0.0
        value = float(result[0]["value"][1])
        return 0.0 if math.isnan(value) or math.isinf(value) else value


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


def build(settings: Settings) -> PrometheusAnalysis:
    """The Prometheus analysis of MLCD_PROMETHEUS_URL (the embedded default uses LocalAnalysis)."""
    if not settings.prometheus_url:
        raise ConfigError("MLCD_PROMETHEUS_URL is not set; use LocalAnalysis over local serving instead")
    return PrometheusAnalysis(settings.prometheus_url)
