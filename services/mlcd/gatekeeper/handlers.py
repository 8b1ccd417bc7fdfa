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
from mlcd.store import gates, validations
from mlcd.store.unit_of_work import Transaction, UnitOfWork

log = logs.get(__name__)

CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
MAINTAINER = 40  # GitLab's access level of a Maintainer
# Merge-request hook actions that carry one approval by the hook's user: `approval` while more are needed,
# `approved` once the merge request has all it needs.
MERGE_REQUEST_APPROVALS = frozenset({"approved", "approval"})
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
    training = rules.training_view(trained)
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


async def on_merge_request_changed(
    event: events.Envelope[events.MergeRequestChanged],
    uow: UnitOfWork,
    *,
    policies: PolicyBook,
    code_host: ports.CodeHost,
) -> None:
    """An approval of a merge request counts for the open gates of the candidates it brought, where the
    model's policy says so (`approval.merge_request_approval`); the approver is checked like a comment's."""
    change = event.data
    policy = policies.get(change.model) if change.model else None
    if change.action not in MERGE_REQUEST_APPROVALS or policy is None:
        return
    if not policy.approval.merge_request_approval:
        log.info("merge-request approvals do not count for this model", model=change.model, iid=change.iid)
        return
    async with uow.transaction() as tx:
        opened = await gates.open_for_merge_request(tx.connection, change.project, change.iid)
    linked = [gate for gate in opened if gate.model == change.model]
    approver = change.author.username
    refusals = {g.id: await gitlab_refusal(g, approver, policies, code_host) for g in linked}
    async with uow.transaction(completes=True) as tx:
        results = [
            await _merge_request_approval(tx, gate.id, approver, change.iid, refusals[gate.id])
            for gate in linked
        ]
    for result in results:
        reply = notices.decision_reply(
            result.gate.id if result.gate else "?", approver, "approval", result.status, result.message
        )
        marker = f"mlcd:decision:{event.id}:{result.gate.id if result.gate else ''}"
        await _best_effort(
            "merge-request reply",
            code_host.upsert_merge_request_note(change.project, change.iid, marker, reply),
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
    data_uri = str(candidate.training.get("data_uri", ""))
    validation = None
    if data_uri:
        async with uow.transaction() as tx:
            validation = await validations.batch_verdict(tx.connection, candidate.model, data_uri)
    context = rules.Context(
        candidate=rules.version_view(version),
        champion=rules.version_view(champion) if champion else None,
        data=rules.data_view(data_uri, validation),
        training=candidate.training,
    )
    outcomes = [
        *rules.evaluate(compiled.rules_for(champion is not None), context),
        *servable(serving, version, await registry.flavors(version)),
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
        # GitLab is asked before the transaction: which merge request brought the commit, and (where the
        # policy counts them) who approves it already; those approvals are applied with the opening.
        project = policy.code.project if policy.code else ""
        merge_request = await _merge_request_of(code_host, project, candidate.commit)
        approvers: list[str] = []
        if merge_request is not None and policy.approval.merge_request_approval:
            approvers = await _approvers(code_host, project, merge_request.iid)
        gate = _new_gate(uow, candidate, champion, outcomes, policy, merge_request)
        refusals = {who: await gitlab_refusal(gate, who, policies, code_host) for who in approvers}
        async with uow.transaction(completes=True) as tx:
            opened = await _open_gate(tx, gate, outcomes)
            for who, refusal in refusals.items():
                assert merge_request is not None
                await _merge_request_approval(tx, opened.gate_id, who, merge_request.iid, refusal)
        await _announce_gate(opened, candidate, settings, code_host, notifier, project, merge_request)


def servable(
    serving: ports.Serving, version: ports.ModelVersion, flavors: ports.Flavors
) -> list[events.RuleOutcome]:
    """A failed outcome (rule `servable`) when the serving platform could not load the version: refused now,
    on the gate, rather than approved by on-call and refused by the deployer later. `mlcd explain` runs it
    too."""
    problem = serving.servable_problem(version, flavors)
    if problem is None:
        return []
    return [
        events.RuleOutcome(
            name="servable",
            expression="the serving platform can download and load the version",
            passed=False,
            values={"artifact_uri": version.serving_uri, "flavors": sorted(flavors)},
            error=problem,
        )
    ]


def _new_gate(
    uow: UnitOfWork,
    candidate: _Candidate,
    champion: ports.ModelVersion | None,
    outcomes: list[events.RuleOutcome],
    policy: Policy,
    merge_request: ports.MergeRequestRef | None,
) -> gates.Gate:
    cause = uow.cause.id if uow.cause else f"{candidate.model}/{candidate.version}"
    now = datetime.now(UTC)
    return gates.Gate(
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
        merge_request_iid=merge_request.iid if merge_request else None,
        merge_request_url=merge_request.url if merge_request else "",
        correlation_id=uow.correlation or "",
    )


async def _merge_request_of(
    code_host: ports.CodeHost, project: str, commit: str
) -> ports.MergeRequestRef | None:
    """The merge request that brought `commit` (a merged one first); None when there is none or GitLab
    cannot say now: a gate opens without its link rather than not at all."""
    if not (project and commit):
        return None
    try:
        found = await code_host.merge_requests_of_commit(project, commit)
    except MlcdError as e:
        log.warning("cannot find the merge request of the commit; the gate opens without it", error=str(e))
        return None
    return found[0] if found else None


async def _approvers(code_host: ports.CodeHost, project: str, iid: int) -> list[str]:
    try:
        return await code_host.merge_request_approvers(project, iid)
    except MlcdError as e:
        log.warning("cannot read the merge request's approvals; they count when approved again", error=str(e))
        return []


async def _merge_request_approval(
    tx: Transaction, gate_id: str, approver: str, iid: int, refusal: str | None
) -> gate_decisions.DecisionResult:
    """One approval of the merge request, applied to the gate like an on-call decision (audited as via
    gitlab); the change's author is refused by the gate's own rule."""

    async def authorise(_: gates.Gate) -> str | None:
        return refusal

    return await gate_decisions.decide(
        tx,
        gate_id,
        actor=approver,
        via="gitlab",
        decision="approve",
        reason=f"approved merge request !{iid}",
        authorise=authorise,
    )


async def _open_gate(
    tx: Transaction, new: gates.Gate, outcomes: list[events.RuleOutcome]
) -> events.GateOpened:
    now = new.created_at
    gate = await gates.open_gate(tx.connection, new)
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
        author=gate.author,
        merge_request_url=gate.merge_request_url,
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
    merge_request: ports.MergeRequestRef | None,
) -> None:
    """The commit note and the merge-request note are best effort: an unreachable GitLab must not keep a
    gate from opening. Each carries a hidden marker, so a redelivery posts neither twice. Chat channels
    hear of the gate from the notifier service (it reads GateOpened), not from here."""
    title, body = notices.gate_opened(opened, settings.effective_api_url)
    marker = f"mlcd gate {opened.gate_id} opened"
    if project and candidate.commit:
        note = code_host.post_commit_note(project, candidate.commit, marker, f"### {title}\n\n{body}")
        await _best_effort("commit note", note)
    if project and merge_request is not None:
        mr_note = code_host.upsert_merge_request_note(
            project, merge_request.iid, marker, f"### {title}\n\n{body}"
        )
        await _best_effort("merge-request note", mr_note)


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
        events.MergeRequestChanged: [on_merge_request_changed],
        events.PromotionApproved: [on_promotion_approved],
        events.PromotionRejected: [on_promotion_rejected],
        events.AlertFired: [on_alert_fired],
    },
    timers=[Timer("expire-gates", 30.0, expire_gates)],
)
