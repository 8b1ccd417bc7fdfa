"""The trainer: validated data, a newly published pipeline or a retrain request start a training run.

One active run per model; triggers that arrive during it coalesce into one follow-up on the newest data.
A run's name derives from its trigger's event id and is looked up before a create, so a redelivered
trigger never starts a second run. A timer follows active runs with growing pauses and reports each
run's end as training-succeeded (model version and metrics) or training-failed (failing task, log tail).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlcd import events, logs, ports
from mlcd.adapters import mlflow as mlflow_adapter
from mlcd.bus.service import ServiceSpec, Timer
from mlcd.config import Settings
from mlcd.errors import NotFound, TemporaryError
from mlcd.policy.book import PolicyBook
from mlcd.store import training
from mlcd.store.training import Trigger
from mlcd.store.unit_of_work import UnitOfWork
from mlcd.trainer import decisions

log = logs.get(__name__)
DEFAULT_TIMEOUT = timedelta(hours=2)


async def on_data_validated(
    event: events.Envelope[events.DataValidated],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    data = event.data
    trigger = Trigger(data.model, event.id, data.uri, f"data validated: {data.uri}")
    await request_training(
        trigger, uow, settings=settings, policies=policies, orchestrator=orchestrator, objects=objects
    )


async def on_retrain_requested(
    event: events.Envelope[events.RetrainRequested],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    data = event.data
    data_uri = data.data_uri or await _last_data_uri(uow, data.model)
    if data_uri is None:
        message = (
            f"retraining {data.model} was requested ({data.reason}), but no data batch was validated yet"
        )
        uow.emit(events.NoticeRaised(model=data.model, message=message, cause_event_id=event.id))
        return
    trigger = Trigger(data.model, event.id, data_uri, f"retrain requested: {data.reason}")
    await request_training(
        trigger, uow, settings=settings, policies=policies, orchestrator=orchestrator, objects=objects
    )


async def on_pipeline_published(
    event: events.Envelope[events.PipelinePublished],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    data = event.data
    policy = policies.get(data.model)
    data_uri = await _last_data_uri(uow, data.model)
    if policy is None or policy.training is None or policy.training.pipeline != data.pipeline or not data_uri:
        log.info(
            "published pipeline not retrained: not the model's pipeline, or no data yet", model=data.model
        )
        return
    reason = f"pipeline {data.pipeline} {data.version} published"
    trigger = Trigger(data.model, event.id, data_uri, reason, commit=data.commit)
    await request_training(
        trigger, uow, settings=settings, policies=policies, orchestrator=orchestrator, objects=objects
    )


async def _last_data_uri(uow: UnitOfWork, model: str) -> str | None:
    async with uow.transaction() as tx:
        return await training.last_data_uri(tx.connection, model)


async def request_training(
    trigger: Trigger,
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    """Start a run for `trigger`, or make it the model's follow-up when a run is active."""
    policy = policies.get(trigger.model)
    if policy is None or policy.training is None:
        log.info("no training policy for the model; trigger ignored", model=trigger.model)
        return
    name = decisions.run_name(trigger.model, trigger.event_id)
    intent: training.TrainingRun | None = None
    async with uow.transaction() as tx:
        conn = tx.connection
        await training.lock_model(conn, trigger.model)
        await training.remember_data(conn, trigger.model, trigger.data_uri)
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
            intent = training.intended_run(name, trigger, policy.training.pipeline, _lease(settings))
            await training.record_intent(conn, intent)
        elif admission is decisions.Admission.DUPLICATE and active is not None:
            intent = active if active.state == training.STARTING else None  # a crash came before the submit
    if intent is None:
        return
    try:
        await launch(
            intent, uow, settings=settings, policies=policies, orchestrator=orchestrator, objects=objects
        )
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


async def launch(
    intent: training.TrainingRun,
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    """Submit an intended run (found by name when a crash came after its submit), then record it running."""
    name = intent.run_name
    policy = policies.get(intent.model)
    pipeline = await orchestrator.latest(intent.pipeline)
    if pipeline is None:
        reason = f"pipeline {intent.pipeline} has no published version to run"
        async with uow.transaction() as tx:
            if await training.record_finished(tx.connection, name, "FAILED", reason):
                tx.emit(
                    events.TrainingFailed(model=intent.model, run_id="", reason=reason),
                    id=decisions.event_id_of(name, "failed"),
                )
        return
    parameters = decisions.run_parameters(
        model=intent.model,
        data_uri=readable_uri(intent.data_uri, objects),
        commit=intent.commit,
        pipeline_version=pipeline.version,
        name=name,
        tracking_uri=mlflow_adapter.tracking_uri(settings),
        settings=settings,
        policy_parameters=policy.training.parameters if policy and policy.training else {},
    )
    run = await orchestrator.find_run(name) or await orchestrator.submit(name, pipeline, parameters)
    first_check = datetime.now(UTC) + decisions.check_delay(0)
    async with uow.transaction() as tx:
        if not await training.record_submitted(
            tx.connection, name, run.run_id, pipeline.version, first_check
        ):
            return  # another follower recorded this run's start
        tx.emit(
            events.TrainingStarted(
                model=intent.model,
                run_id=run.run_id,
                run_name=name,
                pipeline_version=pipeline.version,
                data_uri=intent.data_uri,
                trigger_event_id=intent.trigger_event_id,
            ),
            id=decisions.event_id_of(name, "started"),
        )
    log.info("training run started", model=intent.model, run=name, pipeline_version=pipeline.version)


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
) -> None:
    """Timer: look at each active run that is due; report the ones that ended and start their follow-ups."""
    async with uow.transaction() as tx:
        due = await training.due(tx.connection, datetime.now(UTC))
    for row in due:
        with logs.bound(model=row.model, run=row.run_name):
            await follow(
                row,
                uow,
                settings=settings,
                policies=policies,
                orchestrator=orchestrator,
                registry=registry,
                objects=objects,
            )


async def follow(
    row: training.TrainingRun,
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    registry: ports.Registry,
    objects: ports.ObjectStore,
) -> None:
    async with uow.transaction() as tx:
        claimed = await training.claim(tx.connection, row, datetime.now(UTC) + _lease(settings))
    if not claimed:
        return  # another follower got here first
    if row.state == training.STARTING:
        log.info("resuming a run whose submit was interrupted")
        await _launch_or_look_again(row, uow, settings, policies, orchestrator, objects)
        return
    policy = policies.get(row.model)
    limit = policy.training.timeout if policy and policy.training else DEFAULT_TIMEOUT
    try:
        run = await orchestrator.get_run(row.run_id)
        if not run.finished and not decisions.timed_out(row.started_at, datetime.now(UTC), limit):
            await _look_again(uow, row)
            return
        if not run.finished:
            # Past training.timeout: stop it on the cluster, not only in mlcd's books.
            await orchestrator.terminate_run(row.run_id)
            log.warning("run terminated: it outlived training.timeout", timeout=str(limit))
        outcome = await _outcome(row, run, registry, limit)
    except TemporaryError as e:
        log.warning("cannot follow the run now; will look again", error=str(e))
        await _look_again(uow, row)
        return
    follow_up = await _report(row, outcome, uow, settings, policies)
    if follow_up is not None:
        await _launch_or_look_again(follow_up, uow, settings, policies, orchestrator, objects)


async def _launch_or_look_again(
    intent: training.TrainingRun,
    uow: UnitOfWork,
    settings: Settings,
    policies: PolicyBook,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    """The follower's submit: on an outage the intent stays and is tried again after a growing pause."""
    try:
        await launch(
            intent, uow, settings=settings, policies=policies, orchestrator=orchestrator, objects=objects
        )
    except TemporaryError as e:
        log.warning("cannot submit the run now; will try again", error=str(e))
        await _look_again(uow, intent)


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
        events.RetrainRequested: [on_retrain_requested],
    },
    timers=[Timer("follow-runs", 1.0, follow_runs)],
)
