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
    current = await rollouts.running(uow.connection, approved.model)
    if current is None:
        await start_rollout(
            uow, approved.model, approved.model_version, event.id, policies, registry, serving
        )
        return
    if current.version == approved.model_version:
        log.info("approval of the version already rolling out; nothing to do", version=current.version)
        return
    await rollouts.wait(uow.connection, approved.model, approved.model_version, event.id)
    uow.emit(
        events.NoticeRaised(
            model=approved.model,
            message=(
                f"version {approved.model_version} waits behind the rollout of version {current.version} "
                f"({current.traffic_percent}%); it supersedes that rollout when the step's analysis is due"
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
) -> None:
    """First step of a rollout; a model's first version goes straight to 100 % (nothing to compare)."""
    policy = _policy(policies, model)
    candidate = await registry.get_version(model, version)
    champion = await registry.version_by_alias(model, CHAMPION)
    if champion is not None and champion.version == version:
        uow.emit(events.NoticeRaised(model=model, message=f"version {version} is already the champion"))
        return
    if champion is None:
        await serving.promote(model, version, candidate.source)
        await registry.set_alias(model, CHAMPION, version)
        await rollouts.start(
            uow.connection,
            model=model,
            version=version,
            artifact_uri=candidate.source,
            previous_version=None,
            previous_artifact_uri=None,
            steps=[100],
            next_analysis_at=None,
            cause_event_id=cause_id,
            state=rollouts.SUCCEEDED,
        )
        uow.emit(events.RolloutStarted(model=model, model_version=version, steps=[100]))
        uow.emit(events.RolloutStepCompleted(model=model, model_version=version, traffic_percent=100))
        uow.emit(events.RolloutSucceeded(model=model, model_version=version))
        return
    plan = list(policy.rollout.steps)
    await serving.set_canary(model, version, candidate.source, plan[0])
    await rollouts.start(
        uow.connection,
        model=model,
        version=version,
        artifact_uri=candidate.source,
        previous_version=champion.version,
        previous_artifact_uri=champion.source,
        steps=plan,
        next_analysis_at=_now() + policy.rollout.interval,
        cause_event_id=cause_id,
    )
    uow.emit(
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
    for rollout in await rollouts.due(uow.connection, _now()):
        with logs.bound(model=rollout.model, version=rollout.version):
            await _isolated(uow, advance_one(uow, rollout, policies, registry, serving, analysis))
    for waiting in await rollouts.all_waiting(uow.connection):
        if await rollouts.running(uow.connection, waiting.model) is None:
            with logs.bound(model=waiting.model, version=waiting.version):
                await _isolated(uow, _start_waiting(uow, waiting, policies, registry, serving))


async def _isolated(uow: UnitOfWork, work: Awaitable[None]) -> None:
    # One model's failure (MLflow or the cluster down) must not undo another model's step in this tick.
    mark = len(uow.emitted)
    try:
        async with uow.connection.begin_nested():
            await work
    except MlcdError as e:
        del uow.emitted[mark:]
        log.warning("rollout step failed; retried next tick", error=f"{type(e).__name__}: {e}")


async def _start_waiting(
    uow: UnitOfWork, waiting: rollouts.Waiting, policies: PolicyBook, registry: Registry, serving: Serving
) -> None:
    await rollouts.take_waiting(uow.connection, waiting.model)
    await start_rollout(
        uow, waiting.model, waiting.version, waiting.cause_event_id, policies, registry, serving
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
    waiting = await rollouts.waiting(uow.connection, rollout.model)
    if waiting is not None:
        await _supersede(uow, rollout, waiting, policies, registry, serving)
        return
    state = await serving.state(rollout.model)
    # Only this step's traffic counts: the window starts when the step was applied.
    window_s = min(policy.rollout.interval.total_seconds(), (_now() - rollout.updated_at).total_seconds())
    figures = await analysis.measure(rollout.model, rollout.version, max(0.001, window_s))
    verdict = steps.judge(figures, policy.rollout.thresholds, ready=state.ready, not_ready_why=state.message)
    if not verdict.conclusive:
        await rollouts.postpone(uow.connection, rollout, _now() + policy.rollout.interval, verdict.reason)
        return
    if not verdict.passed:
        await roll_back(
            uow, rollout, serving, f"analysis failed at {rollout.traffic_percent}%: {verdict.reason}", figures
        )
        return
    uow.emit(
        events.RolloutStepCompleted(
            model=rollout.model,
            model_version=rollout.version,
            traffic_percent=rollout.traffic_percent,
            analysis=figures,
        )
    )
    following = steps.next_step(rollout.steps, rollout.step_index)
    if following is None or steps.is_final(rollout.steps, following):
        await _promote(uow, rollout, registry, serving, figures, completes_final_step=following is not None)
        return
    await serving.set_canary(rollout.model, rollout.version, rollout.artifact_uri, rollout.steps[following])
    await rollouts.advance(uow.connection, rollout, _now() + policy.rollout.interval, figures)


async def _promote(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    registry: Registry,
    serving: Serving,
    figures: dict[str, float],
    *,
    completes_final_step: bool,
) -> None:
    await serving.promote(rollout.model, rollout.version, rollout.artifact_uri)
    await registry.set_alias(rollout.model, CHAMPION, rollout.version)
    if rollout.previous_version is not None:
        await registry.set_version_tags(
            rollout.model, rollout.version, {PREVIOUS_CHAMPION_TAG: rollout.previous_version}
        )
    await rollouts.finish(
        uow.connection, rollout, rollouts.SUCCEEDED, figures=figures, step_index=len(rollout.steps) - 1
    )
    if completes_final_step:
        uow.emit(
            events.RolloutStepCompleted(
                model=rollout.model, model_version=rollout.version, traffic_percent=100
            )
        )
    uow.emit(
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
    await rollouts.finish(uow.connection, rollout, rollouts.SUPERSEDED, reason=reason)
    uow.emit(
        events.NoticeRaised(
            model=rollout.model,
            message=f"rollout of version {rollout.version} stopped at {rollout.traffic_percent}%: {reason}",
            cause_event_id=waiting.cause_event_id,
        )
    )
    await _start_waiting(uow, waiting, policies, registry, serving)


async def roll_back(
    uow: UnitOfWork, rollout: rollouts.Rollout, serving: Serving, reason: str, figures: dict[str, float]
) -> None:
    """All traffic back to the version before the rollout; `champion` stays where it was."""
    await serving.rollback(rollout.model, rollout.previous_version, rollout.previous_artifact_uri)
    await rollouts.finish(uow.connection, rollout, rollouts.ROLLED_BACK, reason=reason, figures=figures)
    uow.emit(
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
    current = await rollouts.running(uow.connection, request.model)
    if current is not None and request.to_version in (None, current.previous_version):
        await roll_back(uow, current, serving, reason, {})
        return
    live = await serving.state(request.model)
    target = request.to_version or await _version_before(uow, request.model, live.stable_version)
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
    if current is not None:
        await rollouts.finish(uow.connection, current, rollouts.ROLLED_BACK, reason=reason)
    if request.to_version is not None:
        await registry.set_alias(request.model, CHAMPION, target)
    uow.emit(
        events.RolledBack(
            model=request.model,
            from_version=current.version if current is not None else live.stable_version,
            to_version=target,
            reason=reason,
        )
    )


async def _version_before(uow: UnitOfWork, model: str, stable: str | None) -> str | None:
    last = await rollouts.last_succeeded(uow.connection, model)
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
