"""The deployer's handlers: approvals start canary rollouts, a timer advances them, rollbacks undo them.

Side effects on serving and the registry are declarative (the same call twice leaves the same state),
so a deployer killed between a side effect and its commit redoes the step's calls, never the step.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime

from mlcd import events, logs
from mlcd.bus.service import ServiceSpec, Timer
from mlcd.deployer import steps
from mlcd.errors import MlcdError
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.ports import Analysis, Registry, Serving
from mlcd.store import rollouts
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)

CHAMPION = "champion"
PREVIOUS_CHAMPION_TAG = "mlcd.previous_champion"
TICK_INTERVAL_S = 1.0


def _policy(policies: PolicyBook, model: str) -> Policy:
    return policies.get(model) or Policy(model=model)


def _now() -> datetime:
    return datetime.now(UTC)


async def on_promotion_approved(
    event: events.Envelope[events.PromotionApproved],
    uow: UnitOfWork,
    *,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
) -> None:
    approved = event.data
    async with uow.transaction() as tx:
        current = await rollouts.running(tx.connection, approved.model)
    if current is None:
        await start_rollout(
            uow, approved.model, approved.model_version, event.id, policies, registry, serving
        )
        return
    if current.version == approved.model_version:
        log.info("approval of the version already rolling out; nothing to do", version=current.version)
        return
    async with uow.transaction(completes=True) as tx:
        await rollouts.wait(tx.connection, approved.model, approved.model_version, event.id)
        tx.emit(
            events.NoticeRaised(
                model=approved.model,
                message=(
                    f"version {approved.model_version} waits behind the rollout of version "
                    f"{current.version} ({current.traffic_percent}%); it supersedes that rollout when the "
                    "step's analysis is due"
                ),
                cause_event_id=event.id,
            )
        )


async def start_rollout(
    uow: UnitOfWork,
    model: str,
    version: str,
    cause_id: str,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
    *,
    from_waiting: bool = False,
) -> None:
    """First step of a rollout; a model's first version goes straight to 100 % (nothing to compare).

    Serving and the registry are changed first, declaratively; the rollout is recorded after (with the
    waiting approval it came from taken off the queue), so a crash in between redoes the same calls.
    """
    policy = _policy(policies, model)
    candidate = await registry.get_version(model, version)
    champion = await registry.version_by_alias(model, CHAMPION)
    if champion is not None and champion.version == version:
        async with uow.transaction(completes=True) as tx:
            if from_waiting:
                await rollouts.take_waiting(tx.connection, model)
            tx.emit(events.NoticeRaised(model=model, message=f"version {version} is already the champion"))
        return
    if champion is None:
        await serving.promote(model, version, candidate.source)
        await registry.set_alias(model, CHAMPION, version)
        plan, state, next_analysis_at = [100], rollouts.SUCCEEDED, None
    else:
        plan, state = list(policy.rollout.steps), rollouts.RUNNING
        next_analysis_at = _now() + policy.rollout.interval
        await serving.set_canary(model, version, candidate.source, plan[0])
    async with uow.transaction(completes=True) as tx:
        if from_waiting:
            await rollouts.take_waiting(tx.connection, model)
        await rollouts.start(
            tx.connection,
            model=model,
            version=version,
            artifact_uri=candidate.source,
            previous_version=champion.version if champion else None,
            previous_artifact_uri=champion.source if champion else None,
            steps=plan,
            next_analysis_at=next_analysis_at,
            cause_event_id=cause_id,
            state=state,
        )
        if champion is None:
            tx.emit(events.RolloutStarted(model=model, model_version=version, steps=plan))
            tx.emit(events.RolloutStepCompleted(model=model, model_version=version, traffic_percent=100))
            tx.emit(events.RolloutSucceeded(model=model, model_version=version))
        else:
            tx.emit(
                events.RolloutStarted(
                    model=model, model_version=version, previous_version=champion.version, steps=plan
                )
            )


async def advance_rollouts(
    uow: UnitOfWork,
    *,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
    analysis: Analysis,
) -> None:
    """Timer: analyse every rollout whose interval is over, then step, promote, supersede or roll back."""
    now = _now()
    async with uow.transaction() as tx:
        due = await rollouts.due(tx.connection, now)
        queued = await rollouts.all_waiting(tx.connection)
        idle = [w for w in queued if await rollouts.running(tx.connection, w.model) is None]
    for rollout in due:
        with logs.bound(model=rollout.model, version=rollout.version):
            await _isolated(_claimed_then_advanced(uow, rollout, now, policies, registry, serving, analysis))
    for waiting in idle:
        with logs.bound(model=waiting.model, version=waiting.version):
            await _isolated(_start_waiting(uow, waiting, policies, registry, serving))


async def _isolated(work: Awaitable[None]) -> None:
    # One model's failure (MLflow or the cluster down) must not stop another model's step in this tick.
    try:
        await work
    except MlcdError as e:
        log.warning("rollout step failed; retried next tick", error=f"{type(e).__name__}: {e}")


async def _claimed_then_advanced(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    now: datetime,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
    analysis: Analysis,
) -> None:
    # The claim is a lease on the row: another deployer replica skips this rollout until it ends, and
    # one that crashed mid-step leaves it to be taken again when the lease runs out.
    policy = _policy(policies, rollout.model)
    async with uow.transaction() as tx:
        claimed = await rollouts.claim(tx.connection, rollout, now, now + policy.rollout.interval)
    if claimed:
        await advance_one(uow, rollout, policies, registry, serving, analysis)


async def _start_waiting(
    uow: UnitOfWork, waiting: rollouts.Waiting, policies: PolicyBook, registry: Registry, serving: Serving
) -> None:
    await start_rollout(
        uow,
        waiting.model,
        waiting.version,
        waiting.cause_event_id,
        policies,
        registry,
        serving,
        from_waiting=True,
    )


async def advance_one(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
    analysis: Analysis,
) -> None:
    policy = _policy(policies, rollout.model)
    async with uow.transaction() as tx:
        waiting = await rollouts.waiting(tx.connection, rollout.model)
    if waiting is not None:
        await _supersede(uow, rollout, waiting, policies, registry, serving)
        return
    state = await serving.state(rollout.model)
    # Only this step's traffic counts: the window starts when the step was applied.
    window_s = min(policy.rollout.interval.total_seconds(), (_now() - rollout.updated_at).total_seconds())
    figures = await analysis.measure(rollout.model, rollout.version, max(0.001, window_s))
    verdict = steps.judge(figures, policy.rollout.thresholds, ready=state.ready, not_ready_why=state.message)
    if not verdict.conclusive:
        async with uow.transaction() as tx:
            await rollouts.postpone(tx.connection, rollout, _now() + policy.rollout.interval, verdict.reason)
        return
    if not verdict.passed:
        await roll_back(
            uow, rollout, serving, f"analysis failed at {rollout.traffic_percent}%: {verdict.reason}", figures
        )
        return
    step_done = events.RolloutStepCompleted(
        model=rollout.model,
        model_version=rollout.version,
        traffic_percent=rollout.traffic_percent,
        analysis=figures,
    )
    following = steps.next_step(rollout.steps, rollout.step_index)
    if following is None or steps.is_final(rollout.steps, following):
        await _promote(
            uow, rollout, registry, serving, figures, step_done, completes_final_step=following is not None
        )
        return
    await serving.set_canary(rollout.model, rollout.version, rollout.artifact_uri, rollout.steps[following])
    async with uow.transaction() as tx:
        await rollouts.advance(tx.connection, rollout, _now() + policy.rollout.interval, figures)
        tx.emit(step_done)


async def _promote(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    registry: Registry,
    serving: Serving,
    figures: dict[str, float],
    step_done: events.RolloutStepCompleted,
    *,
    completes_final_step: bool,
) -> None:
    await serving.promote(rollout.model, rollout.version, rollout.artifact_uri)
    await registry.set_alias(rollout.model, CHAMPION, rollout.version)
    if rollout.previous_version is not None:
        await registry.set_version_tags(
            rollout.model, rollout.version, {PREVIOUS_CHAMPION_TAG: rollout.previous_version}
        )
    async with uow.transaction() as tx:
        await rollouts.finish(
            tx.connection, rollout, rollouts.SUCCEEDED, figures=figures, step_index=len(rollout.steps) - 1
        )
        tx.emit(step_done)
        if completes_final_step:
            tx.emit(
                events.RolloutStepCompleted(
                    model=rollout.model, model_version=rollout.version, traffic_percent=100
                )
            )
        tx.emit(
            events.RolloutSucceeded(
                model=rollout.model, model_version=rollout.version, previous_version=rollout.previous_version
            )
        )


async def _supersede(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    waiting: rollouts.Waiting,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
) -> None:
    reason = f"superseded by version {waiting.version}, approved during the rollout"
    async with uow.transaction() as tx:
        await rollouts.finish(tx.connection, rollout, rollouts.SUPERSEDED, reason=reason)
        tx.emit(
            events.NoticeRaised(
                model=rollout.model,
                message=(
                    f"rollout of version {rollout.version} stopped at {rollout.traffic_percent}%: {reason}"
                ),
                cause_event_id=waiting.cause_event_id,
            )
        )
    await _start_waiting(uow, waiting, policies, registry, serving)


async def roll_back(
    uow: UnitOfWork, rollout: rollouts.Rollout, serving: Serving, reason: str, figures: dict[str, float]
) -> None:
    """All traffic back to the version before the rollout; `champion` stays where it was."""
    await serving.rollback(rollout.model, rollout.previous_version, rollout.previous_artifact_uri)
    async with uow.transaction(completes=True) as tx:
        await rollouts.finish(tx.connection, rollout, rollouts.ROLLED_BACK, reason=reason, figures=figures)
        tx.emit(
            events.RolledBack(
                model=rollout.model,
                from_version=rollout.version,
                to_version=rollout.previous_version,
                reason=reason,
                figures=figures,
            )
        )


async def on_rollback_requested(
    event: events.Envelope[events.RollbackRequested],
    uow: UnitOfWork,
    *,
    registry: Registry,
    serving: Serving,
) -> None:
    request = event.data
    reason = f"{request.reason} (requested by {request.requested_by})"
    async with uow.transaction() as tx:
        current = await rollouts.running(tx.connection, request.model)
        last = await rollouts.last_succeeded(tx.connection, request.model)
    if current is not None and request.to_version in (None, current.previous_version):
        await roll_back(uow, current, serving, reason, {})
        return
    live = await serving.state(request.model)
    target = request.to_version or _version_before(last, live.stable_version)
    if target is None or (target == live.stable_version and live.canary_version is None):
        uow.emit(
            events.NoticeRaised(
                model=request.model,
                message=f"rollback not done: no earlier version than {live.stable_version} is known",
                cause_event_id=event.id,
            )
        )
        return
    wanted = await registry.get_version(request.model, target)
    await serving.rollback(request.model, target, wanted.source)
    if request.to_version is not None:
        await registry.set_alias(request.model, CHAMPION, target)
    async with uow.transaction(completes=True) as tx:
        if current is not None:
            await rollouts.finish(tx.connection, current, rollouts.ROLLED_BACK, reason=reason)
        tx.emit(
            events.RolledBack(
                model=request.model,
                from_version=current.version if current is not None else live.stable_version,
                to_version=target,
                reason=reason,
            )
        )


def _version_before(last: rollouts.Rollout | None, stable: str | None) -> str | None:
    if last is None or last.version != stable:
        return None
    return last.previous_version


SERVICE = ServiceSpec(
    "deployer",
    {
        events.PromotionApproved: [on_promotion_approved],
        events.RollbackRequested: [on_rollback_requested],
    },
    timers=[Timer("advance-rollouts", TICK_INTERVAL_S, advance_rollouts)],
)
