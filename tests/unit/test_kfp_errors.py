"""KFP's API errors by class: a 429 (or 503) is retried no sooner than its Retry-After, another 4xx is
permanent."""

from __future__ import annotations

from kfp_server_api.exceptions import ApiException

from mlcd.adapters import kfp
from mlcd.bus.runtime import RetryPolicy
from mlcd.errors import AdapterUnavailable, PermanentError


def _answer(status: int, headers: dict[str, str] | None = None) -> ApiException:
    error = ApiException(status=status, reason="from the fake")
    error.headers = headers
    return error


def test_a_429_is_retried_no_sooner_than_its_retry_after() -> None:
    error = kfp._translated("http://kfp", "create a run", _answer(429, {"Retry-After": "30"}))
    assert isinstance(error, AdapterUnavailable) and error.retry_after_s == 30
    assert RetryPolicy(initial_s=0.2, max_s=10).delay(1, error) == 30


def test_a_503_without_retry_after_is_retried_on_the_backoff_and_a_403_is_permanent() -> None:
    unavailable = kfp._translated("http://kfp", "create a run", _answer(503))
    assert isinstance(unavailable, AdapterUnavailable) and unavailable.retry_after_s is None
    forbidden = kfp._translated("http://kfp", "create a run", _answer(403))
    assert isinstance(forbidden, PermanentError) and not RetryPolicy.retries(forbidden)
