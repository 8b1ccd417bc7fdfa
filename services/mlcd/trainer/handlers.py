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
from mlcd.policy.schema import Training
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
    data_uri = data.data_uri or await training.last_data_uri(uow.connection, data.model)
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
    data_uri = await training.last_data_uri(uow.connection, data.model)
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
    conn = uow.connection
    await training.lock_model(conn, trigger.model)
    await training.remember_data(conn, trigger.model, trigger.data_uri)
    active = await training.active_run(conn, trigger.model)
    admission = decisions.admit(active.trigger_event_id if active else None, trigger.event_id)
    if admission is decisions.Admission.QUEUE:
        await training.queue(conn, trigger)
        log.info(
            "run active; trigger coalesced into the follow-up", model=trigger.model, data_uri=trigger.data_uri
        )
    elif admission is decisions.Admission.START:
        await start_run(
            trigger, policy.training, uow, settings=settings, orchestrator=orchestrator, objects=objects
        )


async def start_run(
    trigger: Trigger,
    policy: Training,
    uow: UnitOfWork,
    *,
    settings: Settings,
    orchestrator: ports.Orchestrator,
    objects: ports.ObjectStore,
) -> None:
    name = decisions.run_name(trigger.model, trigger.event_id)
    if await training.get_run(uow.connection, name) is not None:
        return  # this trigger's run was started (and perhaps finished) before
    pipeline = await orchestrator.latest(policy.pipeline)
    if pipeline is None:
        reason = f"pipeline {policy.pipeline} has no published version to run"
        uow.emit(
            events.TrainingFailed(model=trigger.model, run_id="", reason=reason),
            id=decisions.event_id_of(name, "failed"),
        )
        return
    parameters = decisions.run_parameters(
        model=trigger.model,
        data_uri=readable_uri(trigger.data_uri, objects),
        commit=trigger.commit,
        pipeline_version=pipeline.version,
        name=name,
        tracking_uri=mlflow_adapter.tracking_uri(settings),
        settings=settings,
        policy_parameters=policy.parameters,
    )
    run = await orchestrator.find_run(name) or await orchestrator.submit(name, pipeline, parameters)
    row = training.started_run(
        name, trigger, run.run_id, pipeline.pipeline, pipeline.version, decisions.check_delay(0)
    )
    await training.record_started(uow.connection, row)
    started = events.TrainingStarted(
        model=trigger.model,
        run_id=run.run_id,
        run_name=name,
        pipeline_version=pipeline.version,
        data_uri=trigger.data_uri,
        trigger_event_id=trigger.event_id,
    )
    uow.emit(started, id=decisions.event_id_of(name, "started"))
    log.info("training run started", model=trigger.model, run=name, pipeline_version=pipeline.version)


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
    for row in await training.due(uow.connection, datetime.now(UTC)):
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
    conn = uow.connection
    await training.lock_model(conn, row.model)
    current = await training.get_run(conn, row.run_name)
    if current is None or current.state != training.RUNNING:
        return  # another follower got here first
    policy = policies.get(row.model)
    limit = policy.training.timeout if policy and policy.training else DEFAULT_TIMEOUT
    try:
        run = await orchestrator.get_run(row.run_id)
        now = datetime.now(UTC)
        if not run.finished and not decisions.timed_out(row.started_at, now, limit):
            await training.reschedule(
                conn, row.run_name, row.checks + 1, now + decisions.check_delay(row.checks + 1)
            )
            return
        outcome = await _outcome(row, run, registry, limit)
    except TemporaryError as e:
        log.warning("cannot follow the run now; will look again", error=str(e))
        await training.reschedule(
            conn, row.run_name, row.checks + 1, datetime.now(UTC) + decisions.check_delay(row.checks + 1)
        )
        return
    await _report(row, outcome, uow)
    follow_up = await training.take_pending(conn, row.model)
    if follow_up is not None and policy is not None and policy.training is not None:
        await start_run(
            follow_up, policy.training, uow, settings=settings, orchestrator=orchestrator, objects=objects
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
    row: training.TrainingRun, outcome: events.TrainingSucceeded | events.TrainingFailed, uow: UnitOfWork
) -> None:
    if isinstance(outcome, events.TrainingSucceeded):
        await training.record_finished(uow.connection, row.run_name, "SUCCEEDED", "", outcome.model_version)
        uow.emit(outcome, id=decisions.event_id_of(row.run_name, "succeeded"))
        log.info("training succeeded", model_version=outcome.model_version, metrics=outcome.metrics)
    else:
        await training.record_finished(uow.connection, row.run_name, "FAILED", outcome.reason)
        uow.emit(outcome, id=decisions.event_id_of(row.run_name, "failed"))
        log.warning("training failed", reason=outcome.reason, failed_task=outcome.failed_task)


SERVICE = ServiceSpec(
    "trainer",
    {
        events.DataValidated: [on_data_validated],
        events.PipelinePublished: [on_pipeline_published],
        events.RetrainRequested: [on_retrain_requested],
    },
    timers=[Timer("follow-runs", 1.0, follow_runs)],
)
