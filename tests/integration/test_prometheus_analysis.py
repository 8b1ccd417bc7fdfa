"""The Prometheus analysis adapter against a real Prometheus: no data is inconclusive, never a pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlcd.adapters.prometheus import PrometheusAnalysis
from mlcd.errors import PermanentError
from mlcd.policy import analysis
from mlcd.policy.schema import Check, Rollout
from tests.support import prometheus

TARGET = analysis.Target("models", "wine", "wine-predictor-00002", "wine", "2", 30.0)


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus with no targets at all: what used to let every canary step pass."""
    with prometheus.running([], tmp_path_factory.mktemp("prometheus")) as url:
        yield url


@pytest.mark.parametrize("platform", ["serverless", "raw", "local"])
async def test_a_prometheus_without_data_makes_every_built_in_check_inconclusive(
    empty_prometheus: str, platform: analysis.Platform
) -> None:
    outcomes = await PrometheusAnalysis(empty_prometheus).evaluate(Rollout().checks(), platform, TARGET)

    assert [o.passed for o in outcomes] == [None, None, None]
    assert all("no data" in o.reason for o in outcomes)


async def test_a_custom_query_is_judged_by_its_bounds(empty_prometheus: str) -> None:
    checks = [
        Check(name="one", query="vector(1)", min=0.5, max=2),
        Check(name="too-high", query="vector(5)", max=2),
        Check(name="scalar", query="scalar(vector(0.1))", max=2),
    ]
    outcomes = await PrometheusAnalysis(empty_prometheus).evaluate(checks, "serverless", TARGET)

    assert [(o.name, o.value, o.passed) for o in outcomes] == [
        ("one", 1.0, True),
        ("too-high", 5.0, False),
        ("scalar", 0.1, True),
    ]
    assert outcomes[1].reason == "too-high 5 above 2"


async def test_a_query_prometheus_rejects_is_a_permanent_error_with_its_reason(empty_prometheus: str) -> None:
    with pytest.raises(PermanentError, match="Prometheus rejected"):
        await PrometheusAnalysis(empty_prometheus).evaluate(
            [Check(name="bad", query="sum(rate(x[5s])", max=1)], "serverless", TARGET
        )
