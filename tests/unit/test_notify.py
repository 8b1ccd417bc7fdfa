"""The Slack-compatible notifier: what it posts, and how a failing webhook is reported."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from mlcd.adapters import notify
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError


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
    ("status", "error"), [(503, AdapterUnavailable), (429, AdapterUnavailable), (404, PermanentError)]
)
async def test_failing_webhook_raises_by_retryability(status: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=str(status)):
        await _notifier(status, []).notify("churn", "t", "b")


def test_build_picks_the_webhook_only_when_configured() -> None:
    assert isinstance(notify.build(Settings()), notify.LogNotifier)
    configured = Settings(slack_webhook_url=SecretStr("https://hooks.example/T1"))
    assert isinstance(notify.build(configured), notify.WebhookNotifier)
