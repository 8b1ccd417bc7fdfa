"""The Notifier port: a Slack-compatible incoming webhook, or the log when none is configured."""

from __future__ import annotations

import httpx

from mlcd import logs, ports
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError

log = logs.get(__name__)


class WebhookNotifier:
    """Posts `{"text": ...}` to a Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat)."""

    def __init__(
        self, url: str, timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._transport = transport

    async def notify(self, model: str, title: str, body: str) -> None:
        message = {"text": f"*[{model}] {title}*\n{body}"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport) as client:
                response = await client.post(self.url, json=message)
        except httpx.HTTPError as e:
            raise AdapterUnavailable(f"notification webhook did not answer: {type(e).__name__}") from e
        if response.status_code >= 500 or response.status_code == 429:
            raise AdapterUnavailable(f"notification webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentError(f"notification webhook refused the message: {response.status_code}")


class LogNotifier:
    """Writes notices to the JSON log, where `mlcd up` users read them."""

    async def notify(self, model: str, title: str, body: str) -> None:
        log.warning("notice", model=model, title=title, body=body)


def build(settings: Settings) -> ports.Notifier:
    if settings.slack_webhook_url is not None and settings.slack_webhook_url.get_secret_value():
        return WebhookNotifier(settings.slack_webhook_url.get_secret_value())
    return LogNotifier()
