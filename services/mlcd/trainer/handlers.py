"""The trainer: validated data, a newly published pipeline or a retrain request start a training run.

One active run per model; triggers that arrive during it coalesce into one follow-up on the newest data.
A run's name derives from its trigger's event id and is looked up before a create, so a redelivered
trigger never starts a second run. A timer follows active runs with growing pauses and reports each
run's end as training-succeeded (model version and metrics) or training-failed (failing task, log tail).
Each run keeps its trigger's author (the pusher, the batch's uploader, the person who asked for a
retrain) and hands it on with its candidate, so the gate knows whose change it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mlcd import events, logs, ports, tracing
from mlcd.adapters import mlflow as mlflow_adapter
from mlcd.bus.service import Callback, ServiceSpec, Timer
from mlcd.config import Settings
from mlcd.errors import NotFound, PermanentError, TemporaryError
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Training, Tuning
from mlcd.store import outbox, training
from mlcd.store.training import Trigger
from mlcd.store.unit_of_work import UnitOfWork
from mlcd.trainer import decisions, tuning

log = logs.get(__name__)
DEFAULT_TIMEOUT = timedelta(hours=2)


@dataclasses.dataclass(frozen=True)
class TrainerPorts:
    """What starting and following a run needs, handed on as one value."""

    settings: Settings
    policies: PolicyBook
    orchestrator: ports.Orchestrator
    objects: ports.ObjectStore
    tuner: ports.Tuner
    jobs: ports.TrainingJobs
    registry: ports.Registry


TriggerOf = Callable[[Any, UnitOfWork, PolicyBook], Awaitable[Trigger | None]]


def _starts_training(trigger_of: TriggerOf) -> Callback:
    """The handler for an event that may start a run: `trigger_of` says on what, or None for nothing."""

    async def handler(
        event: events.Envelope[Any],
        uow: UnitOfWork,
        *,
        settings: Settings,
        policies: PolicyBook,
        orchestrator: ports.Orchestrator,
        objects: ports.ObjectStore,
        tuner: ports.Tuner,
        jobs: ports.TrainingJobs,
        registry: ports.Registry,
    ) -> None:
        trigger = await trigger_of(event, uow, policies)
        if trigger is not None:
            trainer = TrainerPorts(settings, policies, orchestrator, objects, tuner, jobs, registry)
            await request_training(trigger, uow, trainer)

    handler.__qualname__ = handler.__name__ = trigger_of.__name__
    return handler


@_starts_training
async def on_data_validated(
    event: events.Envelope[events.DataValidated], uow: UnitOfWork, policies: PolicyBook
) -> Trigger | None:
    data = event.data
    trigger = Trigger(
        data.model,
        event.id,
        data.uri,
        f"data validated: {data.uri}",
        author=data.author,
        correlation_id=event.correlation,
    )
    return _pinned(trigger, training.Batch(data.uri, data.etag, data.version_id))


@_starts_training
async def on_retrain_requested(
    event: events.Envelope[events.RetrainRequested], uow: UnitOfWork, policies: PolicyBook
) -> Trigger | None:
    data = event.data
    batch = await _batch(uow, data.model, data.data_uri)
    if batch is None:
        message = (
            f"retraining {data.model} was requested ({data.reason}), but no data batch was validated yet"
        )
        uow.emit(events.NoticeRaised(model=data.model, message=message, cause_event_id=event.id))
        return None
    trigger = Trigger(
        data.model,
        event.id,
        batch.uri,
        f"retrain requested: {data.reason}",
        author=data.requested_by,
        correlation_id=event.correlation,
    )
    return _pinned(trigger, batch)


@_starts_training
async def on_pipeline_published(
    event: events.Envelope[events.PipelinePublished], uow: UnitOfWork, policies: PolicyBook
) -> Trigger | None:
    data = event.data
    policy = policies.get(data.model)
    batch = await _batch(uow, data.model)
    if policy is None or policy.training is None or policy.training.pipeline != data.pipeline or not batch:
        log.info(
            "published pipeline not retrained: not the model's pipeline, or no data yet", model=data.model
        )
        return None
    reason = f"pipeline {data.pipeline} {data.version} published"
    trigger = Trigger(
        data.model, event.id, batch.uri, reason, data.commit, data.author, correlation_id=event.correlation
    )
    return _pinned(trigger, batch)


@_starts_training
async def on_features_applied(
    event: events.Envelope[events.FeaturesApplied], uow: UnitOfWork, policies: PolicyBook
) -> Trigger | None:
    """Applied features retrain the model on its newest batch where its policy says `features.retrain`."""
    data = event.data
    policy = policies.get(data.model)
    batch = await _batch(uow, data.model)
    if policy is None or policy.features is None or not policy.features.retrain or not batch:
        log.info(
            "applied features not retrained on: the policy says not to, or no data yet", model=data.model
        )
        return None
    reason = f"features {data.path} applied at {data.commit[:8]}"
    trigger = Trigger(
        data.model, event.id, batch.uri, reason, data.commit, data.author, correlation_id=event.correlation
    )
    return _pinned(trigger, batch)


async def _batch(uow: UnitOfWork, model: str, named: str | None = None) -> training.Batch | None:
    """The batch to train on: the one named, else the model's newest. The newest is pinned as it was
    validated (its ETag, its version), also when named; any other batch named is read as it is now."""
    async with uow.transaction() as tx:
        newest = await training.last_data(tx.connection, model)
    if named is None or (newest is not None and newest.uri == named):
        return newest
    return training.Batch(named) if named else None


def _pinned(trigger: Trigger, batch: training.Batch | None) -> Trigger:
    """The trigger reading its batch's bytes as validated (none pinned: the object as it is then)."""
    if batch is None:
        return trigger
    return dataclasses.replace(trigger, data_etag=batch.etag, data_version_id=batch.version_id)


async def request_training(trigger: Trigger, uow: UnitOfWork, trainer: TrainerPorts) -> None:
    """Start a run for `trigger`, or make it the model's follow-up when a run is active."""
    policy = trainer.policies.get(trigger.model)
    if policy is None or policy.training is None:
        log.info("no training policy for the model; trigger ignored", model=trigger.model)
        return
    name = decisions.run_name(trigger.model, trigger.event_id)
    intent: training.TrainingRun | None = None
    async with uow.transaction() as tx:
        conn = tx.connection
        await training.lock_model(conn, trigger.model)
        await training.remember_data(conn, trigger)
        active = await training.active_run(conn, trigger.model)
        admission = decisions.admit(active.trigger_event_id if active else None, trigger.event_id)
        if admission is decisions.Admission.QUEUE:
            await training.queue(conn, trigger)
            log.info(
                "run active; trigger coalesced into the follow-up",
                model=trigger.model,
                data_uri=trigger.data_uri,
            )
        elif admission is decisions.Admission.START and await training.get_run(conn, name) is None:
            intent = training.intended_run(name, trigger, policy.training.pipeline, _lease(trainer.settings))
            await training.record_intent(conn, intent)
        elif admission is decisions.Admission.DUPLICATE and active is not None:
            intent = active if active.state == training.STARTING else None  # a crash came before the submit
    if intent is None:
        return
    try:
        if not await launch(intent, uow, trainer):
            await _look_again(uow, intent)  # a tuning experiment runs first: look at it soon
    except Exception:  # any failed submit: the intent goes, the error goes on to the runtime
        # A failed submit (KFP down or hung) must not leave the model "busy": the runtime retries or parks
        # this trigger, and a later trigger must be able to start its own run. Only a crash (kill -9, or a
        # cancel while stopping) leaves the intent behind; the redelivered trigger or the follower resumes it.
        async with uow.transaction() as tx:
            await training.drop_intent(tx.connection, intent.run_name)
        raise


def _lease(settings: Settings) -> timedelta:
    """How long a follower leaves a run alone that another is submitting: longer than three KFP calls."""
    return timedelta(seconds=max(60.0, 4 * settings.kfp_timeout_s))


async def launch(intent: training.TrainingRun, uow: UnitOfWork, trainer: TrainerPorts) -> bool:
    """Submit an intended run (found by name when a crash came after its submit), then record it running.

    A tuned run first starts its experiment and returns False while the experiment runs (the caller looks
    again later); True once the run was submitted, or failed before it could be.
    """
    name = intent.run_name
    settings, orchestrator = trainer.settings, trainer.orchestrator
    policy = trainer.policies.get(intent.model)
    plan = policy.training if policy and policy.training else None
    plan = plan or Training.model_construct(pipeline=intent.pipeline)
    pipeline = None if plan.backend == "job" else await orchestrator.latest(intent.pipeline)
    if plan.backend == "pipeline" and pipeline is None:
        await _fail_before_submit(uow, intent, f"pipeline {intent.pipeline} has no published version to run")
        return True
    parameters = decisions.run_parameters(
        model=intent.model,
        data_uri=readable_uri(intent.data_uri, trainer.objects),
        data_etag=intent.data_etag,
        data_version_id=intent.data_version_id,
        commit=intent.commit,
        pipeline_version=pipeline.version if pipeline else "",
        name=name,
        tracking_uri=mlflow_adapter.tracking_uri(settings),
        settings=settings,
        policy_parameters=plan.parameters,
    )
    tuned: ports.TuningResult | None = None
    if plan.tuning is not None and pipeline is not None:
        tuned = await _tuning(intent, uow, plan.tuning, pipeline, parameters, trainer.tuner)
        if tuned is None or not tuned.finished:
            return tuned is None  # None: the experiment failed and the run was reported failed
        if tuned.name:
            parameters = {**parameters, **tuned.parameters}
        else:
            tuned = None  # not tuned this time (policy's `when`)
    if plan.backend == "job":
        try:
            run = await trainer.jobs.submit_job(tuning.kube_name(name), plan.job or {}, parameters)
        except PermanentError as e:
            await _fail_before_submit(uow, intent, str(e))
            return True
        version_label = ""
    else:
        assert pipeline is not None
        run = await orchestrator.find_run(name) or await orchestrator.submit(name, pipeline, parameters)
        version_label = pipeline.version
    first_check = datetime.now(UTC) + decisions.check_delay(0)
    async with uow.transaction() as tx:
        if not await training.record_submitted(tx.connection, name, run.run_id, version_label, first_check):
            return True  # another follower recorded this run's start
        tx.emit(
            events.TrainingStarted(
                model=intent.model,
                run_id=run.run_id,
                run_name=name,
                pipeline_version=version_label,
                data_uri=intent.data_uri,
                trigger_event_id=intent.trigger_event_id,
                author=intent.author,
                tuning_experiment=tuned.name if tuned else "",
                tuned_parameters=tuned.parameters if tuned else {},
                data_etag=intent.data_etag,
                data_version_id=intent.data_version_id,
            ),
            id=decisions.event_id_of(name, "started"),
        )
    log.info("training run started", model=intent.model, run=name, pipeline_version=version_label)
    return True


async def _fail_before_submit(uow: UnitOfWork, intent: training.TrainingRun, reason: str) -> None:
    async with uow.transaction() as tx:
        if await training.record_finished(tx.connection, intent.run_name, "FAILED", reason):
            tx.emit(
                events.TrainingFailed(model=intent.model, run_id="", reason=reason),
                id=decisions.event_id_of(intent.run_name, "failed"),
            )
    log.warning("training failed before its run was submitted", reason=reason)


async def _tuning(
    intent: training.TrainingRun,
    uow: UnitOfWork,
    policy: Tuning,
    pipeline: ports.PipelineRef,
    parameters: dict[str, Any],
    tuner: ports.Tuner,
) -> ports.TuningResult | None:
    """The run's experiment as it stands, started when this run is to be tuned; a SUCCEEDED result carries
    the best parameters, typed. A run not to be tuned gets a SUCCEEDED result without a name; None: the
    experiment failed or timed out, and the run was reported failed."""
    experiment = tuning.kube_name(intent.run_name)
    result = await tuner.result(experiment)
    if result is None:
        if not await _to_be_tuned(uow, intent, policy):
            return ports.TuningResult("", "SUCCEEDED")
        trials = {**parameters, "model_name": tuning.trials_model(intent.model), "run_alias": ""}
        request = ports.TuningRequest(experiment, intent.model, pipeline, trials, policy)
        result = await tuner.start(request)
        log.info("tuning experiment started", experiment=experiment, algorithm=policy.algorithm)
    if result.state == "RUNNING":
        if decisions.timed_out(intent.started_at, datetime.now(UTC), policy.timeout):
            await tuner.cancel(experiment)
            await _fail_before_submit(
                uow, intent, f"tuning experiment {experiment} did not finish within {policy.timeout}; deleted"
            )
            return None
        return result
    if result.state != "SUCCEEDED":
        await _fail_before_submit(uow, intent, tuning.failure(result))
        return None
    try:
        best = tuning.typed_assignments(policy, result.parameters)
    except ValueError as e:
        await _fail_before_submit(uow, intent, f"tuning experiment {experiment}: {e}")
        return None
    log.info("tuning experiment done", experiment=experiment, best_trial=result.best_trial, parameters=best)
    return dataclasses.replace(result, parameters=best)


async def _to_be_tuned(uow: UnitOfWork, intent: training.TrainingRun, policy: Tuning) -> bool:
    async with uow.transaction() as tx:
        runs = await training.runs(tx.connection, intent.model)
        earlier = [r for r in runs if r.run_name != intent.run_name]
        rejected = await outbox.journal(
            tx.connection, model=intent.model, event_type=events.PromotionRejected.type, limit=20
        )
    candidates = [r.model_version for r in earlier if r.state == "SUCCEEDED" and r.model_version]
    missed = bool(candidates) and any(
        e["data"].get("model_version") == candidates[-1] and any(not r["passed"] for r in e["data"]["rules"])
        for _, e in rejected
    )
    return tuning.should_tune(policy, len(earlier), missed)


def readable_uri(data_uri: str, objects: ports.ObjectStore) -> str:
    """The batch's URI as the orchestrator reads it: the object store's own URI for a canonical s3:// one.

    Events keep the canonical `s3://bucket/key`; the embedded folder store answers with a file:// URI.
    """
    location = decisions.s3_location(data_uri)
    return objects.uri(*location) if location is not None else data_uri


async def follow_runs(
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    registry: ports.Registry,
    objects: ports.ObjectStore,
    tuner: ports.Tuner,
    jobs: ports.TrainingJobs,
) -> None:
    """Timer: look at each active run that is due; report the ones that ended and start their follow-ups."""
    trainer = TrainerPorts(settings, policies, orchestrator, objects, tuner, jobs, registry)
    async with uow.transaction() as tx:
        due = await training.due(tx.connection, datetime.now(UTC))
    for row in due:
        with (
            logs.bound(model=row.model, run=row.run_name, correlation_id=row.correlation_id),
            tracing.following(row.correlation_id, row.trigger_event_id),
        ):
            await follow(row, uow, trainer)


async def follow(row: training.TrainingRun, uow: UnitOfWork, trainer: TrainerPorts) -> None:
    settings, policies = trainer.settings, trainer.policies
    async with uow.transaction() as tx:
        claimed = await training.claim(tx.connection, row, datetime.now(UTC) + _lease(settings))
    if not claimed:
        return  # another follower got here first
    if row.state == training.STARTING:
        log.info("looking at a run not submitted yet: its tuning experiment, or an interrupted submit")
        await _launch_or_look_again(row, uow, trainer)
        return
    policy = policies.get(row.model)
    limit = policy.training.timeout if policy and policy.training else DEFAULT_TIMEOUT
    runs: ports.TrainingJobs | ports.Orchestrator = (
        trainer.jobs if decisions.is_job(row.run_id) else trainer.orchestrator
    )
    try:
        run = await runs.get_run(row.run_id)
        if not run.finished and not decisions.timed_out(row.started_at, datetime.now(UTC), limit):
            await _look_again(uow, row)
            return
        if not run.finished:
            # Past training.timeout: stop it on the cluster (a job is deleted), not only in mlcd's books.
            await runs.terminate_run(row.run_id)
            log.warning("run terminated: it outlived training.timeout", timeout=str(limit))
        outcome = await _outcome(row, run, trainer.registry, limit)
        tuned = policy.training.tuning if policy and policy.training else None
        if isinstance(outcome, events.TrainingSucceeded) and tuned is not None:
            outcome = await _with_tuning(outcome, row, tuned, trainer.tuner, trainer.registry)
    except TemporaryError as e:
        log.warning("cannot follow the run now; will look again", error=str(e))
        await _look_again(uow, row)
        return
    follow_up = await _report(row, outcome, uow, settings, policies)
    if follow_up is not None:
        await _launch_or_look_again(follow_up, uow, trainer)


async def _launch_or_look_again(intent: training.TrainingRun, uow: UnitOfWork, trainer: TrainerPorts) -> None:
    """The follower's submit: on an outage the intent stays and is tried again after a growing pause; so
    does an intent whose tuning experiment still runs. The run continues its own trigger's chain."""
    try:
        with tracing.following(intent.correlation_id, intent.trigger_event_id):
            if await launch(intent, uow, trainer):
                return
    except TemporaryError as e:
        log.warning("cannot submit the run now; will try again", error=str(e))
    await _look_again(uow, intent)


async def _with_tuning(
    outcome: events.TrainingSucceeded,
    row: training.TrainingRun,
    policy: Tuning,
    tuner: ports.Tuner,
    registry: ports.Registry,
) -> events.TrainingSucceeded:
    """The succeeded run's experiment on its event and as tags on its version (when the run was tuned)."""
    result = await tuner.result(tuning.kube_name(row.run_name))
    if result is None or result.state != "SUCCEEDED":
        return outcome
    try:
        best = tuning.typed_assignments(policy, result.parameters)
    except ValueError:
        best = dict(result.parameters)
    result = dataclasses.replace(result, parameters=best)
    await registry.set_version_tags(row.model, outcome.model_version, tuning.version_tags(result))
    return outcome.model_copy(
        update={
            "tuning_experiment": result.name,
            "tuning_best_trial": result.best_trial,
            "tuning_objective_value": result.objective_value,
            "tuned_parameters": best,
        }
    )


async def _look_again(uow: UnitOfWork, row: training.TrainingRun) -> None:
    checks = row.checks + 1
    async with uow.transaction() as tx:
        await training.reschedule(
            tx.connection, row.run_name, checks, datetime.now(UTC) + decisions.check_delay(checks)
        )


async def _outcome(
    row: training.TrainingRun, run: ports.Run, registry: ports.Registry, limit: timedelta
) -> events.TrainingSucceeded | events.TrainingFailed:
    if not run.finished:
        return events.TrainingFailed(
            model=row.model,
            run_id=row.run_id,
            reason=f"run did not finish within {limit}",
            log_tail=run.log_tail,
        )
    if run.state != "SUCCEEDED":
        return events.TrainingFailed(
            model=row.model,
            run_id=row.run_id,
            reason=decisions.failure_reason(run),
            failed_task=run.failed_task,
            log_tail=run.log_tail,
        )
    version = decisions.model_version(run.outputs)
    metrics = decisions.training_metrics(run.outputs)
    alias = decisions.run_alias(row.run_name)
    if version is None or not metrics:
        # The alias is deleted below, before this report commits: a trainer killed in between finds the
        # version again by the run-name tag the pipeline sets beside the alias.
        registered = await _registered_by_alias(registry, row.model, alias) or await registry.version_by_tag(
            row.model, decisions.RUN_NAME_TAG, row.run_name
        )
        if registered is None:
            reason = "run succeeded but no registered model version could be found for it"
            return events.TrainingFailed(model=row.model, run_id=row.run_id, reason=reason)
        version, metrics = registered.version, metrics or registered.metrics
    await registry.delete_alias(row.model, alias)
    return events.TrainingSucceeded(
        model=row.model,
        run_id=row.run_id,
        model_version=version,
        metrics=metrics,
        data_uri=row.data_uri,
        pipeline_version=row.pipeline_version,
        commit=row.commit,
        author=row.author,
    )


async def _registered_by_alias(registry: ports.Registry, model: str, alias: str) -> ports.ModelVersion | None:
    try:
        return await registry.version_by_alias(model, alias)
    except NotFound:
        return None


async def _report(
    row: training.TrainingRun,
    outcome: events.TrainingSucceeded | events.TrainingFailed,
    uow: UnitOfWork,
    settings: Settings,
    policies: PolicyBook,
) -> training.TrainingRun | None:
    """Record the run's end with its event; the model's follow-up, if one waits, becomes the next intent."""
    succeeded = isinstance(outcome, events.TrainingSucceeded)
    async with uow.transaction() as tx:
        conn = tx.connection
        await training.lock_model(conn, row.model)
        if isinstance(outcome, events.TrainingSucceeded):
            ended = await training.record_finished(conn, row.run_name, "SUCCEEDED", "", outcome.model_version)
        else:
            ended = await training.record_finished(conn, row.run_name, "FAILED", outcome.reason)
        if not ended:
            return None  # reported before
        tx.emit(outcome, id=decisions.event_id_of(row.run_name, "succeeded" if succeeded else "failed"))
        follow_up = await training.take_pending(conn, row.model)
        policy = policies.get(row.model)
        if follow_up is None or policy is None or policy.training is None:
            intent = None
        else:
            name = decisions.run_name(follow_up.model, follow_up.event_id)
            intent = training.intended_run(name, follow_up, policy.training.pipeline, _lease(settings))
            if await training.get_run(conn, name) is None:
                await training.record_intent(conn, intent)
            else:
                intent = None
    if isinstance(outcome, events.TrainingSucceeded):
        log.info("training succeeded", model_version=outcome.model_version, metrics=outcome.metrics)
    else:
        log.warning("training failed", reason=outcome.reason, failed_task=outcome.failed_task)
    return intent


SERVICE = ServiceSpec(
    "trainer",
    {
        events.DataValidated: [on_data_validated],
        events.PipelinePublished: [on_pipeline_published],
        events.FeaturesApplied: [on_features_applied],
        events.RetrainRequested: [on_retrain_requested],
    },
    timers=[Timer("follow-runs", 1.0, follow_runs)],
)
