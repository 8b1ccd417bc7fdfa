"""Chat and webhook channels for notices: Slack-compatible and Microsoft Teams incoming webhooks, a
generic JSON webhook, or the log when none is configured.

Each sender posts one message and leaves through the mlcd error tree: an outage, a 5xx or a 429 is
retryable (TemporaryError, with the 429's Retry-After), any other refusal permanent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from mlcd import logs, ports
from mlcd.adapters import retry_after, trace_headers
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, PermanentError, TemporaryError

log = logs.get(__name__)

ChatKind = Literal["slack", "teams", "webhook"]


@dataclass(frozen=True)
class Message:
    """A notice as people read it: what happened, why, and how to act, plus links."""

    kind: str
    model: str
    title: str
    what: str
    why: list[str] = field(default_factory=list)
    act: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    event_id: str = ""
    event_type: str = ""

    def markdown(self) -> str:
        """GitLab-flavoured Markdown (also what the log and the generic webhook carry as `text`)."""
        lines = [self.what]
        if self.why:
            lines += ["", "**Why**", *self.why]
        if self.act:
            lines += ["", "**What to do**", "```", *self.act, "```"]
        lines += [f"[{name}]({url})" for name, url in self.links.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "title": self.title,
            "what": self.what,
            "why": self.why,
            "act": self.act,
            "links": self.links,
            "event_id": self.event_id,
            "event_type": self.event_type,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Message:
        return cls(**{key: body[key] for key in cls.__dataclass_fields__ if key in body})


def slack_payload(message: Message) -> dict[str, Any]:
    """Slack's incoming-webhook body (`text` in mrkdwn); Mattermost and Rocket.Chat read the same."""
    lines = [f"*[{message.model}] {message.title}*", message.what]
    if message.why:
        lines += ["*Why*", *message.why]
    if message.act:
        lines += ["*What to do*", "```" + "\n".join(message.act) + "```"]
    lines += [f"<{url}|{name}>" for name, url in message.links.items()]
    return {"text": "\n".join(lines)}


def teams_payload(message: Message) -> dict[str, Any]:
    """A Microsoft Teams incoming-webhook (Workflows) message carrying one Adaptive Card."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": f"[{message.model}] {message.title}", "weight": "Bolder", "wrap": True},
        {"type": "TextBlock", "text": message.what, "wrap": True},
    ]
    if message.why:
        body.append({"type": "TextBlock", "text": "Why", "weight": "Bolder"})
        body += [{"type": "TextBlock", "text": line, "wrap": True} for line in message.why]
    if message.act:
        body.append({"type": "TextBlock", "text": "What to do", "weight": "Bolder"})
        body.append(
            {"type": "TextBlock", "text": "\n\n".join(message.act), "fontType": "Monospace", "wrap": True}
        )
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "actions": [
            {"type": "Action.OpenUrl", "title": name, "url": url} for name, url in message.links.items()
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def json_payload(message: Message) -> dict[str, Any]:
    return {**message.as_dict(), "text": message.markdown()}


_PAYLOADS = {"slack": slack_payload, "teams": teams_payload, "webhook": json_payload}


async def post(
    kind: ChatKind,
    url: str,
    message: Message,
    *,
    idempotency_key: str,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Post `message` to one chat or webhook channel. The generic webhook gets an `Idempotency-Key`
    header (the same on every retry of this notice); chat webhooks take none."""
    headers = {"Idempotency-Key": idempotency_key} if kind == "webhook" else {}
    where = _host(url)
    try:
        async with httpx.AsyncClient(
            event_hooks=trace_headers.HTTPX_HOOKS, timeout=timeout_s, transport=transport
        ) as client:
            response = await client.post(url, json=_PAYLOADS[kind](message), headers=headers)
    except httpx.HTTPError as e:
        raise AdapterUnavailable(f"{kind} webhook at {where} did not answer: {type(e).__name__}") from e
    _check_answer(response, f"{kind} webhook at {where}")


def _check_answer(response: httpx.Response, who: str) -> None:
    """A 429 is retried no sooner than its Retry-After, a 5xx is retried, any other 4xx is permanent."""
    if response.status_code == 429:
        wait_s = retry_after.seconds(response.headers.get("Retry-After"))
        raise TemporaryError(f"{who} asks to slow down (429)", retry_after_s=wait_s)
    if response.status_code >= 500:
        raise AdapterUnavailable(f"{who} answered {response.status_code}")
    if response.status_code >= 400:
        raise PermanentError(f"{who} refused the message: {response.status_code}")


def _host(url: str) -> str:
    """The webhook's host only: the path of a Slack or Teams webhook URL is its secret."""
    try:
        return httpx.URL(url).host or "?"
    except httpx.InvalidURL:
        return "?"


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
            async with httpx.AsyncClient(
                event_hooks=trace_headers.HTTPX_HOOKS, timeout=self.timeout_s, transport=self._transport
            ) as client:
                response = await client.post(self.url, json=message)
        except httpx.HTTPError as e:
            raise AdapterUnavailable(f"notification webhook did not answer: {type(e).__name__}") from e
        _check_answer(response, "notification webhook")


class LogNotifier:
    """Writes notices to the JSON log, where `mlcd up` users read them."""

    async def notify(self, model: str, title: str, body: str) -> None:
        log.warning("notice", model=model, title=title, body=body)


def build(settings: Settings) -> ports.Notifier:
    if settings.slack_webhook_url is not None and settings.slack_webhook_url.get_secret_value():
        return WebhookNotifier(settings.slack_webhook_url.get_secret_value())
    return LogNotifier()
