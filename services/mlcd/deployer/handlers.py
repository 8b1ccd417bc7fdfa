"""The deployer's handlers: approvals start canary rollouts, a timer advances them, rollbacks undo them.

Side effects on serving and the registry are declarative (the same call twice leaves the same state),
so a deployer killed between a side effect and its commit redoes the step's calls, never the step.

Success is read from what the serving platform reports, never from what mlcd asked for: a step is
analysed only once its split is observed (KServe: Ready for the generation, the traffic split in its
status), and a version becomes champion only once its promotion is observed. A step that is not Ready,
or whose checks are inconclusive (no data is never a pass), waits up to the policy's progress_deadline;
then it rolls back (not Ready) or `on_inconclusive` decides: pause for on-call, or roll back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from mlcd import events, logs, tracing
from mlcd.bus.service import ServiceSpec, Timer
from mlcd.deployer import steps
from mlcd.errors import ArtifactUnreadable, MlcdError
from mlcd.policy import analysis
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Check, Policy
from mlcd.ports import Analysis, ModelVersion, Registry, Serving, ServingState
from mlcd.store import rollouts
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)

CHAMPION = "champion"
PREVIOUS_CHAMPION_TAG = "mlcd.previous_champion"
ROLLED_BACK_TAG = "mlcd.rolled_back"
TICK_INTERVAL_S = 1.0
OBSERVE_POLL = timedelta(seconds=1)  # how soon a step waiting for the platform's report looks again


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
        await rollouts.wait(
            tx.connection, approved.model, approved.model_version, event.id, event.correlation
        )
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
    A first version becomes champion only once the platform reports it serving.
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
    uri = candidate.serving_uri
    try:
        if champion is None:
            await serving.promote(model, version, uri)
        else:
            await serving.set_canary(model, version, uri, policy.rollout.steps[0])
    except ArtifactUnreadable as e:
        await _refuse(uow, model, version, uri, cause_id, str(e), from_waiting=from_waiting)
        return
    plan = [100] if champion is None else list(policy.rollout.steps)
    first_version_served = champion is None and _promotion_observed(await serving.state(model), version, uri)
    if first_version_served:
        await registry.set_alias(model, CHAMPION, version)
    async with uow.transaction(completes=True) as tx:
        if from_waiting:
            await rollouts.take_waiting(tx.connection, model)
        await rollouts.start(
            tx.connection,
            model=model,
            version=version,
            artifact_uri=uri,
            previous_version=champion.version if champion else None,
            previous_artifact_uri=champion.serving_uri if champion else None,
            steps=plan,
            next_analysis_at=None if first_version_served else _now() + _first_wait(policy, champion),
            cause_event_id=cause_id,
            correlation_id=uow.correlation or "",
            state=rollouts.SUCCEEDED if first_version_served else rollouts.RUNNING,
            phase=rollouts.PROMOTING if champion is None else rollouts.STEP,
        )
        tx.emit(
            events.RolloutStarted(
                model=model,
                model_version=version,
                previous_version=champion.version if champion else None,
                steps=plan,
            )
        )
        if first_version_served:
            tx.emit(events.RolloutStepCompleted(model=model, model_version=version, traffic_percent=100))
            tx.emit(events.RolloutSucceeded(model=model, model_version=version))


def _first_wait(policy: Policy, champion: ModelVersion | None) -> timedelta:
    return OBSERVE_POLL if champion is None else policy.rollout.interval


async def _refuse(
    uow: UnitOfWork, model: str, version: str, uri: str, cause_id: str, reason: str, *, from_waiting: bool
) -> None:
    """A version the platform cannot load: nothing moved; the rollout and the journal say why."""
    async with uow.transaction(completes=True) as tx:
        if from_waiting:
            await rollouts.take_waiting(tx.connection, model)
        await rollouts.start(
            tx.connection,
            model=model,
            version=version,
            artifact_uri=uri,
            previous_version=None,
            previous_artifact_uri=None,
            steps=[100],
            next_analysis_at=None,
            cause_event_id=cause_id,
            correlation_id=uow.correlation or "",
            state=rollouts.FAILED,
            reason=reason,
        )
        tx.emit(
            events.NoticeRaised(
                model=model,
                message=f"rollout of version {version} refused: {reason}",
                cause_event_id=cause_id,
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
        with _in_chain(rollout.model, rollout.version, rollout.correlation_id):
            await _isolated(_claimed_then_advanced(uow, rollout, now, policies, registry, serving, analysis))
    for waiting in idle:
        with _in_chain(waiting.model, waiting.version, waiting.correlation_id):
            await _isolated(_start_waiting(uow, waiting, policies, registry, serving))


@contextmanager
def _in_chain(model: str, version: str, correlation_id: str) -> Iterator[None]:
    """Work of a timer on one rollout: logged with its model and version, its events in its chain."""
    with (
        logs.bound(model=model, version=version, correlation_id=correlation_id),
        tracing.following(correlation_id),
    ):
        yield


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


def _deadline_passed(rollout: rollouts.Rollout, policy: Policy, now: datetime) -> bool:
    started = rollout.step_started_at or rollout.updated_at
    return now - started >= policy.rollout.progress_deadline


def _step_observed(state: ServingState, rollout: rollouts.Rollout) -> bool:
    """The platform reports this step: Ready for its generation, and the canary getting its share."""
    return (
        state.ready
        and state.canary_version == rollout.version
        and state.serving_percent == rollout.traffic_percent
        and (not state.canary_uri or state.canary_uri == rollout.artifact_uri)
    )


def _promotion_observed(state: ServingState, version: str, uri: str) -> bool:
    return (
        state.ready
        and state.canary_version is None
        and state.stable_version == version
        and (not state.stable_uri or state.stable_uri == uri)
    )


def _target(
    state: ServingState, rollout: rollouts.Rollout, revision: str, window_s: float
) -> analysis.Target:
    return analysis.Target(
        namespace=state.namespace,
        service=state.service or rollout.model,
        revision=revision,
        model=rollout.model,
        version=rollout.version,
        window_s=max(0.001, window_s),
    )


def _platform(state: ServingState) -> analysis.Platform:
    platforms: tuple[analysis.Platform, ...] = ("serverless", "raw", "seldon")
    return next((p for p in platforms if p == state.platform), "local")


async def advance_one(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policies: PolicyBook,
    registry: Registry,
    serving: Serving,
    analysis_port: Analysis,
) -> None:
    policy = _policy(policies, rollout.model)
    now = _now()
    if rollout.requested == "abort":
        await roll_back(uow, rollout, serving, registry, "aborted by on-call", {})
        return
    async with uow.transaction() as tx:
        waiting = await rollouts.waiting(tx.connection, rollout.model)
    if waiting is not None and rollout.phase == rollouts.STEP:
        await _supersede(uow, rollout, waiting, policies, registry, serving)
        return
    state = await serving.state(rollout.model)
    if rollout.phase == rollouts.PROMOTING:
        await _await_promotion(uow, rollout, policy, registry, serving, state, now)
        return
    if rollout.phase == rollouts.GUARDING:
        await _guard(uow, rollout, policy, registry, serving, analysis_port, state, now)
        return
    if rollout.requested == "promote":
        await _promote(uow, rollout, policy, registry, serving, {}, None)
        return
    if (applied := _applied_next_step(state, rollout)) is not None:
        await _record_applied_move(uow, rollout, policy, registry, serving, now, applied)
        return
    if state.canary_version != rollout.version or state.canary_percent != rollout.traffic_percent:
        # The spec is not this step's (a deployer died between a step's change and its commit, or
        # someone edited it): apply the recorded step again; it is declarative.
        await serving.set_canary(
            rollout.model, rollout.version, rollout.artifact_uri, rollout.traffic_percent
        )
        state = await serving.state(rollout.model)
    if not _step_observed(state, rollout):
        if _deadline_passed(rollout, policy, now):
            why = (
                state.message or f"traffic observed {state.serving_percent}%, not {rollout.traffic_percent}%"
            )
            reason = (
                f"canary not Ready at {rollout.traffic_percent}% within "
                f"{policy.rollout.progress_deadline}: {why}"
            )
            await roll_back(uow, rollout, serving, registry, reason, {})
            return
        async with uow.transaction() as tx:
            await rollouts.postpone(
                tx.connection, rollout, now + OBSERVE_POLL, f"waiting for the platform: {state.message}"
            )
        return
    started = rollout.step_started_at or rollout.updated_at
    window_s = min(policy.rollout.interval.total_seconds(), (now - started).total_seconds())
    target = _target(state, rollout, state.canary_revision, window_s)
    checks = policy.rollout.checks()
    verdict = steps.verdict(await analysis_port.evaluate(checks, _platform(state), target))
    taken = _measurements(checks, verdict)
    if verdict.failed:
        reason = f"analysis failed at {rollout.traffic_percent}%: {verdict.reason}"
        await roll_back(uow, rollout, serving, registry, reason, verdict.figures, measured=taken)
        return
    if not verdict.conclusive:
        await _inconclusive(uow, rollout, policy, registry, serving, verdict, now, taken)
        return
    step_done = events.RolloutStepCompleted(
        model=rollout.model,
        model_version=rollout.version,
        traffic_percent=rollout.traffic_percent,
        analysis=verdict.figures,
    )
    following = steps.next_step(rollout.steps, rollout.step_index)
    if following is None or steps.is_final(rollout.steps, following):
        await _promote(
            uow,
            rollout,
            policy,
            registry,
            serving,
            verdict.figures,
            step_done,
            measured=taken,
        )
        return
    await serving.set_canary(rollout.model, rollout.version, rollout.artifact_uri, rollout.steps[following])
    async with uow.transaction() as tx:
        await rollouts.measured(tx.connection, rollout, taken)
        await rollouts.advance(tx.connection, rollout, now + policy.rollout.interval, verdict.figures)
        tx.emit(step_done)


def _measurements(checks: list[Check], verdict: steps.AnalysisVerdict) -> list[rollouts.Measurement]:
    """What one analysis measured, each value beside the bounds its check holds it to (for the charts)."""
    bounds = {check.name: (check.min, check.max) for check in checks}
    return [
        rollouts.Measurement(o.name, o.value, o.passed, *bounds.get(o.name, (None, None)), reason=o.reason)
        for o in verdict.outcomes
    ]


def _applied_next_step(state: ServingState, rollout: rollouts.Rollout) -> int | None:
    """The next step, when the spec already holds its move: a deployer died after applying it and before
    recording it. Only a passed analysis makes that move, so it is recorded, never undone."""
    following = steps.next_step(rollout.steps, rollout.step_index)
    if following is None:
        return None
    if steps.is_final(rollout.steps, following):
        applied = state.canary_version is None and state.stable_version == rollout.version
    else:
        applied = state.canary_version == rollout.version and state.canary_percent == rollout.steps[following]
    return following if applied else None


async def _record_applied_move(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policy: Policy,
    registry: Registry,
    serving: Serving,
    now: datetime,
    following: int,
) -> None:
    """Record the step whose move the spec holds (its analysis figures died with the deployer)."""
    step_done = events.RolloutStepCompleted(
        model=rollout.model, model_version=rollout.version, traffic_percent=rollout.traffic_percent
    )
    if steps.is_final(rollout.steps, following):
        await _promote(uow, rollout, policy, registry, serving, {}, step_done)
        return
    async with uow.transaction() as tx:
        await rollouts.advance(tx.connection, rollout, now + policy.rollout.interval, {})
        tx.emit(step_done)


async def _inconclusive(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policy: Policy,
    registry: Registry,
    serving: Serving,
    verdict: steps.AnalysisVerdict,
    now: datetime,
    taken: list[rollouts.Measurement],
) -> None:
    """Keep waiting until the deadline; then pause for on-call or roll back, as the policy says."""
    if not _deadline_passed(rollout, policy, now):
        async with uow.transaction() as tx:
            await rollouts.measured(tx.connection, rollout, taken)
            await rollouts.postpone(tx.connection, rollout, now + policy.rollout.interval, verdict.reason)
        return
    reason = (
        f"analysis inconclusive at {rollout.traffic_percent}% for {policy.rollout.progress_deadline}: "
        f"{verdict.reason}"
    )
    if policy.rollout.on_inconclusive == "rollback":
        await roll_back(uow, rollout, serving, registry, reason, verdict.figures, measured=taken)
        return
    async with uow.transaction(completes=True) as tx:
        await rollouts.measured(tx.connection, rollout, taken)
        await rollouts.pause(tx.connection, rollout, reason)
        tx.emit(
            events.RolloutPaused(
                model=rollout.model,
                model_version=rollout.version,
                traffic_percent=rollout.traffic_percent,
                reason=reason,
                figures=verdict.figures,
            )
        )


async def _promote(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policy: Policy,
    registry: Registry,
    serving: Serving,
    figures: dict[str, float],
    step_done: events.RolloutStepCompleted | None,
    *,
    measured: list[rollouts.Measurement] | None = None,
) -> None:
    """All traffic to the candidate; champion moves once the platform reports it serving."""
    await serving.promote(rollout.model, rollout.version, rollout.artifact_uri)
    state = await serving.state(rollout.model)
    async with uow.transaction() as tx:
        await rollouts.measured(tx.connection, rollout, measured or [])
        await rollouts.enter(
            tx.connection,
            rollout,
            rollouts.PROMOTING,
            _now() + OBSERVE_POLL,
            step_index=len(rollout.steps) - 1,
            figures=figures,
        )
        if step_done is not None:
            tx.emit(step_done)
    if _promotion_observed(state, rollout.version, rollout.artifact_uri):
        async with uow.transaction() as tx:
            promoting = await rollouts.running(tx.connection, rollout.model)
        if promoting is not None and promoting.id == rollout.id:
            await _promoted(uow, promoting, policy, registry)


async def _await_promotion(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policy: Policy,
    registry: Registry,
    serving: Serving,
    state: ServingState,
    now: datetime,
) -> None:
    if _promotion_observed(state, rollout.version, rollout.artifact_uri):
        await _promoted(uow, rollout, policy, registry)
        return
    if _deadline_passed(rollout, policy, now):
        reason = f"promotion to 100% not observed within {policy.rollout.progress_deadline}: {state.message}"
        await roll_back(uow, rollout, serving, registry, reason, {})
        return
    async with uow.transaction() as tx:
        await rollouts.postpone(
            tx.connection, rollout, now + OBSERVE_POLL, f"waiting for the platform: {state.message}"
        )


async def _promoted(uow: UnitOfWork, rollout: rollouts.Rollout, policy: Policy, registry: Registry) -> None:
    """The platform serves the version: it is champion; the guard window starts, if the policy has one."""
    await registry.set_alias(rollout.model, CHAMPION, rollout.version)
    if rollout.previous_version is not None:
        await registry.set_version_tags(
            rollout.model, rollout.version, {PREVIOUS_CHAMPION_TAG: rollout.previous_version}
        )
    guard = policy.rollout.guard
    async with uow.transaction() as tx:
        if guard and rollout.previous_version is not None:
            now = _now()
            await rollouts.enter(
                tx.connection,
                rollout,
                rollouts.GUARDING,
                now + policy.rollout.interval,
                guard_until=now + guard,
            )
        else:
            await rollouts.finish(tx.connection, rollout, rollouts.SUCCEEDED, figures=rollout.figures)
        tx.emit(
            events.RolloutStepCompleted(
                model=rollout.model, model_version=rollout.version, traffic_percent=100
            )
        )
        if not guard or rollout.previous_version is None:
            tx.emit(
                events.RolloutSucceeded(
                    model=rollout.model,
                    model_version=rollout.version,
                    previous_version=rollout.previous_version,
                )
            )


async def _guard(
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    policy: Policy,
    registry: Registry,
    serving: Serving,
    analysis_port: Analysis,
    state: ServingState,
    now: datetime,
) -> None:
    """After promotion the same checks keep running on the served revision until the window ends."""
    window_s = policy.rollout.interval.total_seconds()
    target = _target(state, rollout, state.stable_revision, window_s)
    checks = policy.rollout.checks()
    verdict = steps.verdict(await analysis_port.evaluate(checks, _platform(state), target))
    taken = _measurements(checks, verdict)
    if verdict.failed:
        reason = f"post-promotion guard: {verdict.reason}"
        await roll_back(uow, rollout, serving, registry, reason, verdict.figures, measured=taken)
        return
    async with uow.transaction() as tx:
        await rollouts.measured(tx.connection, rollout, taken)
        if rollout.guard_until is not None and now >= rollout.guard_until:
            await rollouts.finish(tx.connection, rollout, rollouts.SUCCEEDED, figures=verdict.figures or None)
            tx.emit(
                events.RolloutSucceeded(
                    model=rollout.model,
                    model_version=rollout.version,
                    previous_version=rollout.previous_version,
                )
            )
        else:
            await rollouts.postpone(tx.connection, rollout, now + policy.rollout.interval, verdict.reason)


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
    uow: UnitOfWork,
    rollout: rollouts.Rollout,
    serving: Serving,
    registry: Registry,
    reason: str,
    figures: dict[str, float],
    *,
    measured: list[rollouts.Measurement] | None = None,
) -> None:
    """All traffic back to the version before the rollout, observed; champion names it again.

    The pulled version is tagged with why (MLflow tag mlcd.rolled_back); `measured`, the analysis that
    decided it, is kept with the rollout.
    """
    await serving.rollback(rollout.model, rollout.previous_version, rollout.previous_artifact_uri)
    if rollout.previous_version is not None:
        await registry.set_alias(rollout.model, CHAMPION, rollout.previous_version)
    await registry.set_version_tags(rollout.model, rollout.version, {ROLLED_BACK_TAG: reason[:500]})
    async with uow.transaction(completes=True) as tx:
        await rollouts.measured(tx.connection, rollout, measured or [])
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
        await roll_back(uow, current, serving, registry, reason, {})
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
    await serving.rollback(request.model, target, wanted.serving_uri)
    # Champion names what serves now; the version taken off is tagged with why.
    await registry.set_alias(request.model, CHAMPION, target)
    pulled = current.version if current is not None else live.stable_version
    if pulled is not None and pulled != target:
        await registry.set_version_tags(request.model, pulled, {ROLLED_BACK_TAG: reason[:500]})
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
