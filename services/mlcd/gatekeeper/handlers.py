"""The gatekeeper's handlers: candidate versus champion, gates and their decisions, monitoring actions."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlcd import events, logs, ports
from mlcd.bus.service import ServiceSpec, Timer
from mlcd.config import Settings
from mlcd.errors import ConfigError, MlcdError, PermanentError
from mlcd.gatekeeper import gate_decisions, notices
from mlcd.policy import decisions, rules
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.store import gates
from mlcd.store.unit_of_work import Transaction, UnitOfWork

log = logs.get(__name__)

CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
MAINTAINER = 40  # GitLab's access level of a Maintainer
_TAG_LIMIT = 500


async def on_training_succeeded(
    event: events.Envelope[events.TrainingSucceeded],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    registry: ports.Registry,
    serving: ports.Serving,
    code_host: ports.CodeHost,
    notifier: ports.Notifier,
) -> None:
    trained = event.data
    training = {
        "run_id": trained.run_id,
        "model_version": trained.model_version,
        "pipeline_version": trained.pipeline_version,
        "commit": trained.commit,
        "author": trained.author,
        "data_uri": trained.data_uri,
        "metrics": dict(trained.metrics),
    }
    candidate = _Candidate(trained.model, trained.model_version, trained.author, trained.commit, training)
    await _judge(candidate, uow, settings, policies, registry, serving, code_host, notifier)


async def on_candidate_registered(
    event: events.Envelope[events.CandidateRegistered],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    registry: ports.Registry,
    serving: ports.Serving,
    code_host: ports.CodeHost,
    notifier: ports.Notifier,
) -> None:
    registered = event.data
    training = {"run_id": registered.run_id or "", "model_version": registered.model_version}
    candidate = _Candidate(registered.model, registered.model_version, "", "", training)
    await _judge(candidate, uow, settings, policies, registry, serving, code_host, notifier)


async def on_decision_requested(
    event: events.Envelope[events.GateDecisionRequested],
    uow: UnitOfWork,
    *,
    policies: PolicyBook,
    code_host: ports.CodeHost,
) -> None:
    """A `/mlcd approve|reject <id>` comment: authorised by the policy's GitLab users or Maintainer access."""
    request = event.data
    # GitLab is asked before the gate's row is locked: no outside call inside a transaction. The model and
    # project of a gate never change, so the answer still holds when the decision is applied.
    async with uow.transaction() as tx:
        gate = await gates.get(tx.connection, request.gate_id)
    refusal = await gitlab_refusal(gate, request.actor, policies, code_host) if gate is not None else None

    async def authorise(_: gates.Gate) -> str | None:
        return refusal

    async with uow.transaction(completes=True) as tx:
        result = await gate_decisions.decide(
            tx,
            request.gate_id,
            actor=request.actor,
            via=request.via,
            decision=request.decision,
            reason=request.reason,
            authorise=authorise,
        )
    if request.project and request.merge_request_iid is not None:
        reply = notices.decision_reply(
            request.gate_id, request.actor, request.decision, result.status, result.message
        )
        marker = f"mlcd:decision:{event.id}"
        await _best_effort(
            "merge-request reply",
            code_host.upsert_merge_request_note(request.project, request.merge_request_iid, marker, reply),
        )


async def on_promotion_approved(
    event: events.Envelope[events.PromotionApproved], uow: UnitOfWork, *, registry: ports.Registry
) -> None:
    """The registry follows the decision, whichever path made it: alias `challenger` and decision tags."""
    approved = event.data
    await registry.set_alias(approved.model, CHALLENGER_ALIAS, approved.model_version)
    tags = {**_rule_tags(approved.rules), "mlcd.approved_by": ", ".join(approved.approved_by) or "policy"}
    if approved.gate_id:
        tags["mlcd.gate"] = approved.gate_id
    await registry.set_version_tags(approved.model, approved.model_version, _decision_last(tags, "approved"))


async def on_promotion_rejected(
    event: events.Envelope[events.PromotionRejected], uow: UnitOfWork, *, registry: ports.Registry
) -> None:
    rejected = event.data
    tags = {**_rule_tags(rejected.rules), "mlcd.reason": rejected.reason[:_TAG_LIMIT]}
    if rejected.gate_id:
        tags["mlcd.gate"] = rejected.gate_id
    if rejected.rejected_by:
        tags["mlcd.rejected_by"] = rejected.rejected_by
    await registry.set_version_tags(rejected.model, rejected.model_version, _decision_last(tags, "rejected"))


async def on_alert_fired(
    event: events.Envelope[events.AlertFired], uow: UnitOfWork, *, policies: PolicyBook
) -> None:
    """The model's monitoring policy decides; one action per model and action per debounce window."""
    alert = event.data
    policy = policies.get(alert.model)
    if policy is None:
        log.warning("alert for a model without a policy; nothing done", model=alert.model, alert=alert.alert)
        return
    action = policy.monitoring.action_for(alert.severity)
    now = datetime.now(UTC)
    async with uow.transaction(completes=True) as tx:
        if not await gates.claim_action(tx.connection, alert.model, action, policy.monitoring.debounce, now):
            log.info("alert debounced", model=alert.model, alert=alert.alert, action=action)
            return
        reason = f"alert {alert.alert} ({alert.severity}) fired"
        if action == "retrain":
            tx.emit(events.RetrainRequested(model=alert.model, reason=reason))
        elif action == "rollback":
            tx.emit(
                events.RollbackRequested(model=alert.model, reason=reason, requested_by="monitoring-policy")
            )
        else:
            summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
            tx.emit(
                events.NoticeRaised(
                    model=alert.model, message=f"{reason}: {summary}".rstrip(": "), cause_event_id=event.id
                )
            )


async def expire_gates(uow: UnitOfWork) -> None:
    """Timer: gates past their deadline expire and their promotion is rejected as expired."""
    now = datetime.now(UTC)
    async with uow.transaction() as tx:
        for gate in await gates.due_for_expiry(tx.connection, now):
            await gate_decisions.expire(tx, gate, now)


async def gitlab_refusal(
    gate: gates.Gate, username: str, policies: PolicyBook, code_host: ports.CodeHost
) -> str | None:
    """Why a GitLab user may not decide the gate, or None: listed for an approver group, or a Maintainer
    of the model's own project (never of the project the comment was made in: anyone maintains some)."""
    policy = policies.get(gate.model)
    groups = policy.approval.groups if policy else gate.approver_groups
    if policy is not None:
        members = {user.lower() for group in groups for user in policy.approval.gitlab_users.get(group, [])}
        if username.lower() in members:
            return None
    target = gate.project or (policy.code.project if policy is not None and policy.code else "")
    if policy is not None and policy.approval.allow_gitlab_maintainers and target:
        if await code_host.access_level(target, username) >= MAINTAINER:
            return None
        return (
            f"GitLab user {username} is in none of the approver groups {groups} nor a Maintainer of {target}"
        )
    return f"GitLab user {username} is in none of the approver groups {groups}"


@dataclass(frozen=True)
class _Candidate:
    model: str
    version: str
    author: str
    commit: str
    training: dict[str, Any] = field(default_factory=dict)


async def _judge(
    candidate: _Candidate,
    uow: UnitOfWork,
    settings: Settings,
    policies: PolicyBook,
    registry: ports.Registry,
    serving: ports.Serving,
    code_host: ports.CodeHost,
    notifier: ports.Notifier,
) -> None:
    try:
        policy = policies.require(candidate.model)
        compiled = policies.compiled(candidate.model)
    except ConfigError as e:
        raise PermanentError(f"cannot judge {candidate.model} version {candidate.version}: {e}") from e
    version = await registry.get_version(candidate.model, candidate.version)
    champion = await registry.version_by_alias(candidate.model, CHAMPION_ALIAS)
    context = rules.Context(
        candidate=rules.version_view(version),
        champion=rules.version_view(champion) if champion else None,
        data={"uri": candidate.training.get("data_uri", "")},
        training=candidate.training,
    )
    outcomes = [
        *rules.evaluate(compiled.rules_for(champion is not None), context),
        *_servable(serving, version, await registry.flavors(version)),
    ]
    needs_approval = policy.approval.required and (
        compiled.approval_when is None or rules.holds(compiled.approval_when, context) is not False
    )
    verdict = decisions.verdict(outcomes, needs_approval)
    log.info("candidate judged", model=candidate.model, version=candidate.version, verdict=verdict)
    if verdict == "reject":
        uow.emit(
            events.PromotionRejected(
                model=candidate.model,
                model_version=candidate.version,
                reason=decisions.rejection_reason(outcomes),
                rules=outcomes,
            )
        )
    elif verdict == "approve":
        uow.emit(
            events.PromotionApproved(model=candidate.model, model_version=candidate.version, rules=outcomes)
        )
    else:
        async with uow.transaction(completes=True) as tx:
            opened = await _open_gate(tx, candidate, champion, outcomes, policy)
        await _announce_gate(
            opened, candidate, settings, code_host, notifier, policy.code.project if policy.code else ""
        )


def _servable(
    serving: ports.Serving, version: ports.ModelVersion, flavors: tuple[str, ...]
) -> list[events.RuleOutcome]:
    """A failed outcome when the serving platform could not load the version: refused now, on the gate,
    rather than approved by on-call and refused by the deployer later."""
    problem = serving.servable_problem(version, flavors)
    if problem is None:
        return []
    return [
        events.RuleOutcome(
            name="servable",
            expression="the serving platform can download and load the version",
            passed=False,
            values={"artifact_uri": version.serving_uri, "flavors": list(flavors)},
            error=problem,
        )
    ]


async def _open_gate(
    tx: Transaction,
    candidate: _Candidate,
    champion: ports.ModelVersion | None,
    outcomes: list[events.RuleOutcome],
    policy: Policy,
) -> events.GateOpened:
    cause = tx.cause.id if tx.cause else f"{candidate.model}/{candidate.version}"
    now = datetime.now(UTC)
    gate = await gates.open_gate(
        tx.connection,
        gates.Gate(
            id=gates.gate_id_for(cause),
            model=candidate.model,
            model_version=candidate.version,
            champion_version=champion.version if champion else None,
            state="open",
            rules=[o.model_dump(mode="json") for o in outcomes],
            approvals_required=policy.approval.count,
            approver_groups=list(policy.approval.groups),
            author=candidate.author,
            project=policy.code.project if policy.code else "",
            commit=candidate.commit,
            created_at=now,
            expires_at=now + policy.approval.timeout,
            cause_event_id=cause,
        ),
    )
    await gates.audit(
        tx.connection,
        gate.id,
        actor=gate_decisions.SYSTEM_ACTOR,
        via="policy",
        action="open",
        outcome="accepted",
        reason="rules passed; approval required",
    )
    opened = events.GateOpened(
        model=gate.model,
        gate_id=gate.id,
        model_version=gate.model_version,
        champion_version=gate.champion_version,
        rules=outcomes,
        approvals_required=gate.approvals_required,
        approver_groups=gate.approver_groups,
        expires_at=gate.expires_at,
    )
    tx.emit(opened)
    await _supersede_older(tx, gate, now)
    return opened


async def _supersede_older(tx: Transaction, newer: gates.Gate, now: datetime) -> None:
    """Open gates of older candidates of the model close as superseded: approving one would roll out an
    old version judged against an old champion."""
    for older in await gates.listing(tx.connection, state="open", model=newer.model):
        if older.id == newer.id:
            continue
        reason = f"superseded by version {newer.model_version} (gate {newer.id})"
        if not await gates.finish(
            tx.connection, older.id, "superseded", gate_decisions.SYSTEM_ACTOR, reason, now
        ):
            continue  # decided meanwhile
        await gates.audit(
            tx.connection,
            older.id,
            actor=gate_decisions.SYSTEM_ACTOR,
            via="policy",
            action="supersede",
            outcome="accepted",
            reason=reason,
        )
        tx.emit(
            events.PromotionRejected(
                model=older.model,
                model_version=older.model_version,
                reason=reason,
                gate_id=older.id,
                rules=[events.RuleOutcome.model_validate(rule) for rule in older.rules],
                rejected_by=gate_decisions.SYSTEM_ACTOR,
            )
        )


async def _announce_gate(
    opened: events.GateOpened,
    candidate: _Candidate,
    settings: Settings,
    code_host: ports.CodeHost,
    notifier: ports.Notifier,
    project: str,
) -> None:
    """The commit note is best effort: an unreachable GitLab must not keep a gate from opening. Chat
    channels hear of the gate from the notifier service (it reads GateOpened), not from here."""
    title, body = notices.gate_opened(opened, settings.effective_api_url)
    if project and candidate.commit:
        note = code_host.post_commit_note(
            project, candidate.commit, f"mlcd gate {opened.gate_id} opened", f"### {title}\n\n{body}"
        )
        await _best_effort("commit note", note)


async def _best_effort(what: str, call: Awaitable[None]) -> None:
    try:
        await call
    except MlcdError as e:
        log.error(f"{what} failed; the gate stands", error=str(e))


def _decision_last(tags: dict[str, str], decision: str) -> dict[str, str]:
    # Registries may write tags one at a time: `mlcd.decision` goes last, so its presence means all are there.
    return {**tags, "mlcd.decision": decision}


def _rule_tags(outcomes: list[events.RuleOutcome]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for outcome in outcomes:
        result = "pass" if outcome.passed else "fail"
        detail = outcome.error or ", ".join(f"{k}={v}" for k, v in outcome.values.items())
        tags[f"mlcd.rule.{outcome.name}"] = f"{result}: {detail}"[:_TAG_LIMIT]
    return tags


SERVICE = ServiceSpec(
    "gatekeeper",
    {
        events.TrainingSucceeded: [on_training_succeeded],
        events.CandidateRegistered: [on_candidate_registered],
        events.GateDecisionRequested: [on_decision_requested],
        events.PromotionApproved: [on_promotion_approved],
        events.PromotionRejected: [on_promotion_rejected],
        events.AlertFired: [on_alert_fired],
    },
    timers=[Timer("expire-gates", 30.0, expire_gates)],
)
