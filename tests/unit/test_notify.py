"""The Slack-compatible notifier: what it posts, and how a failing webhook is reported."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from mlcd.adapters import notify
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError, TemporaryError


def _notifier(status: int, seen: list[httpx.Request]) -> notify.WebhookNotifier:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    return notify.WebhookNotifier("https://hooks.example/T1", transport=httpx.MockTransport(answer))


async def test_posts_the_title_and_body_as_slack_text() -> None:
    seen: list[httpx.Request] = []
    await _notifier(200, seen).notify("churn", "gate abc123 waits", "| rule | result |")
    (request,) = seen
    assert json.loads(request.content) == {"text": "*[churn] gate abc123 waits*\n| rule | result |"}


@pytest.mark.parametrize(
    ("status", "error"), [(503, AdapterUnavailable), (429, TemporaryError), (404, PermanentError)]
)
async def test_failing_webhook_raises_by_retryability(status: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=str(status)):
        await _notifier(status, []).notify("churn", "t", "b")


def test_build_picks_the_webhook_only_when_configured() -> None:
    assert isinstance(notify.build(Settings()), notify.LogNotifier)
    configured = Settings(slack_webhook_url=SecretStr("https://hooks.example/T1"))
    assert isinstance(notify.build(configured), notify.WebhookNotifier)


@pytest.mark.parametrize("kind", ["slack", "teams", "webhook"])
@pytest.mark.parametrize(("retry_after", "wait_s"), [("7", 7.0), ("date +90s", 90.0), (None, None)])
async def test_a_429_is_retried_no_sooner_than_its_retry_after(
    kind: notify.ChatKind, retry_after: str | None, wait_s: float | None
) -> None:
    if retry_after == "date +90s":  # an HTTP-date, made when the test runs
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    headers = {"Retry-After": retry_after} if retry_after else {}
    transport = httpx.MockTransport(lambda _: httpx.Response(429, headers=headers))
    message = notify.Message(kind="gate_opened", model="churn", title="gate waits", what="rules passed")

    with pytest.raises(TemporaryError) as raised:
        await notify.post(kind, "https://hooks.example/T1", message, idempotency_key="k", transport=transport)

    if wait_s is None:
        assert raised.value.retry_after_s is None
    else:
        assert raised.value.retry_after_s == pytest.approx(wait_s, abs=2)
