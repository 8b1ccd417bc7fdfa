"""The notifier service: outcome events in, messages out on the channels each model's policy names.

Each notice is recorded (one row per event and channel) before it is sent and marked sent right after,
each in a short transaction of its own, with no transaction open while a channel is called. A
redelivered event sends only what is not marked sent. The one thing a crash can repeat: a chat message
whose webhook answered but whose "sent" mark had not committed yet is sent again (Slack and Teams
webhooks take no idempotency key; the generic webhook gets `Idempotency-Key`, GitLab notes a hidden
marker, so those two are not repeated).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from mlcd import events, logs, ports
from mlcd.adapters import notify
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.errors import MlcdError, TemporaryError
from mlcd.notifier import messages
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.store import gates, notices
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)

ChannelKind = Literal["slack", "teams", "webhook", "gitlab", "log"]


@dataclass(frozen=True)
class Target:
    """One place a notice goes; `key` names it in the notices table without its (secret) URL."""

    key: str
    kind: ChannelKind
    url: str = ""


@dataclass(frozen=True)
class GitLabPlace:
    """Where on GitLab a notice goes: a note on `commit`, or (no commit: data-triggered work) an issue;
    the marker keeps it to one note or issue."""

    project: str
    commit: str
    marker: str

    @property
    def issue(self) -> bool:
        return not self.commit


async def on_outcome(
    event: events.Envelope[Any],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    code_host: ports.CodeHost,
) -> None:
    message = messages.render(event, settings.effective_api_url)
    if message is None:
        return
    policy = policies.get(message.model)
    async with uow.transaction() as tx:
        place = await _gitlab_place(tx.connection, event, message, policy)
    chosen = {target.key: target for target in targets(policy, message.kind, settings, place is not None)}
    async with uow.transaction() as tx:
        recorded = await notices.record(
            tx.connection,
            event_id=event.id,
            model=message.model,
            kind=message.kind,
            channels=list(chosen),
            message=message.as_dict(),
        )
    retry: TemporaryError | None = None
    for notice in recorded:
        target = chosen.get(notice.channel)
        if notice.state != notices.PENDING or target is None:
            continue
        outcome, error = notices.SENT, ""
        try:
            await deliver(target, notify.Message.from_dict(notice.message), notice.id, code_host, place)
        except TemporaryError as e:  # retried with the event; what was sent stays sent
            outcome, error, retry = notices.PENDING, str(e), retry or e
        except MlcdError as e:
            outcome, error = notices.FAILED, str(e)
            log.error("notice refused by its channel", channel=notice.channel, kind=message.kind, error=error)
        async with uow.transaction() as tx:
            await notices.finish(tx.connection, notice.id, outcome, error)
        if outcome == notices.SENT:
            log.info("notice sent", channel=notice.channel, kind=message.kind, model=message.model)
    if retry is not None:
        raise retry


def targets(policy: Policy | None, kind: str, settings: Settings, on_gitlab: bool) -> list[Target]:
    """The channels a notice of `kind` goes to: the policy's, else the configured Slack webhook (or the
    log) and GitLab; a GitLab channel only where there is a commit to note on."""
    configured = policy.notify.channels if policy is not None else None
    slack = settings.slack_webhook_url.get_secret_value() if settings.slack_webhook_url else ""
    found: list[Target] = []
    if configured is None:
        found.append(_chat("slack", slack) if slack else Target("log", "log"))
        if settings.gitlab_url and on_gitlab:
            found.append(Target("gitlab", "gitlab"))
        return found
    for channel in configured:
        if channel.events is not None and kind not in channel.events:
            continue
        if channel.kind == "gitlab":
            if on_gitlab:
                found.append(Target("gitlab", "gitlab"))
            continue
        url = channel.url or (slack if channel.kind == "slack" else "")
        if url:
            found.append(_chat(channel.kind, url))
        else:
            log.warning("a slack channel without url and no MLCD_SLACK_WEBHOOK_URL: skipped", kind=kind)
    return list({target.key: target for target in found}.values())


async def deliver(
    target: Target,
    message: notify.Message,
    notice_id: str,
    code_host: ports.CodeHost,
    place: GitLabPlace | None,
) -> None:
    if target.kind == "log":
        log.info("notice", model=message.model, title=message.title, text=message.markdown())
    elif target.kind == "gitlab":
        assert place is not None
        if place.issue:
            title = f"mlcd: [{message.model}] {message.title}"
            await code_host.open_issue(place.project, place.marker, title, message.markdown())
        else:
            body = f"### mlcd: {message.title}\n\n{message.markdown()}"
            await code_host.post_commit_note(place.project, place.commit, place.marker, body)
    else:
        await notify.post(target.kind, target.url, message, idempotency_key=notice_id)


def _chat(kind: Literal["slack", "teams", "webhook"], url: str) -> Target:
    return Target(f"{kind}:{hashlib.sha256(url.encode()).hexdigest()[:16]}", kind, url)


async def _gitlab_place(
    conn: Any, event: events.Envelope[Any], message: notify.Message, policy: Policy | None
) -> GitLabPlace | None:
    """Where on GitLab this notice belongs: the commit behind the gate or the failed build, or an issue in
    the model's project for data-triggered work (a rejected batch, a failed run, a gate with no commit)."""
    data = event.data
    project = policy.code.project if policy is not None and policy.code else ""
    if isinstance(data, events.DataRejected | events.TrainingFailed):
        return GitLabPlace(project, "", f"mlcd {message.kind} {event.id}") if project else None
    if isinstance(data, events.PipelineBuildFailed):
        if project and data.commit:
            return GitLabPlace(project, data.commit, f"mlcd build {data.commit[:12]} failed")
        return None
    gate_id = getattr(data, "gate_id", None)
    if not gate_id or message.kind not in ("gate_opened", "gate_decided", "gate_expired"):
        return None
    gate = await gates.get(conn, gate_id)
    if gate is None or not gate.project:
        return None
    if not gate.commit:  # a data-triggered gate: its opening is an issue (its decision is in the audit)
        return (
            GitLabPlace(gate.project, "", f"mlcd gate {gate_id} opened")
            if message.kind == "gate_opened"
            else None
        )
    # The gatekeeper's own markers: whichever posts first, the commit carries one note per state.
    state = {"gate_opened": "opened", "gate_expired": "expired"}.get(message.kind, gate.state)
    return GitLabPlace(gate.project, gate.commit, f"mlcd gate {gate_id} {state}")


SERVICE = ServiceSpec("notifier", {payload: [on_outcome] for payload in messages.TOLD})
