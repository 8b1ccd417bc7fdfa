"""The builder: a push that changes a model's pipeline compiles and publishes it; a merge request is checked.
A model's Feast feature repository is built the same way: planned on merge requests, applied on pushes.

Each build reports on the commit (pending, then success with a link or failed) and, for a merge request,
in one note that later pushes edit in place. A merge request is checked only for the models whose watched
paths its diff (asked of GitLab) changes. A pipeline that does not compile is a normal outcome
(`PipelineBuildFailed`), never an error of the service; outages of GitLab or KFP are retried.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from mlcd import events, logs
from mlcd.adapters import feast
from mlcd.adapters.kfp_compiler import CompileError, compile_in_child
from mlcd.builder import reports, triggers
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.errors import NotFound, PermanentError
from mlcd.policy.book import PolicyBook
from mlcd.policy.schema import Policy
from mlcd.ports import CodeHost, Orchestrator, PipelineRef
from mlcd.store.unit_of_work import UnitOfWork

log = logs.get(__name__)


async def on_code_pushed(
    event: events.Envelope[events.CodePushed],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    code_host: CodeHost,
    orchestrator: Orchestrator,
) -> None:
    push = event.data
    for policy in triggers.models_to_publish(push, policies.for_code(push.project)):
        await _publish(push, policy, uow, settings, code_host, orchestrator)
    for policy in triggers.feature_repos_to_apply(push, policies.for_code(push.project)):
        await _apply_features(push, policy, uow, settings, code_host)


async def on_merge_request_changed(
    event: events.Envelope[events.MergeRequestChanged],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    code_host: CodeHost,
) -> None:
    change = event.data
    if change.action not in triggers.MERGE_REQUEST_ACTIONS:
        return
    if not change.changed_paths:
        paths = await code_host.merge_request_paths(change.project, change.iid)
        if paths is not None:
            change = change.model_copy(update={"changed_paths": paths, "paths_complete": True})
    for policy in triggers.models_to_check(change, policies.for_code(change.project)):
        await _check(change, policy, settings, code_host)
    for policy in triggers.feature_repos_to_plan(change, policies.for_code(change.project)):
        await _plan_features(change, policy, settings, code_host)


async def _publish(
    push: events.CodePushed,
    policy: Policy,
    uow: UnitOfWork,
    settings: Settings,
    code_host: CodeHost,
    orchestrator: Orchestrator,
) -> None:
    assert policy.training is not None
    model, pipeline = policy.model, policy.training.pipeline
    name = reports.status_name(model)
    await code_host.set_commit_status(
        push.project, push.after, "pending", name=name, description=f"compiling pipeline {pipeline}"
    )
    async with _workspace() as workspace:
        ref = await _build(push, policy, workspace, code_host, orchestrator, settings)
    if isinstance(ref, str):
        await code_host.set_commit_status(
            push.project,
            push.after,
            "failed",
            name=name,
            description=reports.one_line(f"not published: {ref}"),
            target_url=reports.failure_link(settings, model),
        )
        uow.emit(events.PipelineBuildFailed(model=model, pipeline=pipeline, commit=push.after, error=ref))
        return
    await code_host.set_commit_status(
        push.project,
        push.after,
        "success",
        name=name,
        description=f"published pipeline {pipeline} version {ref.version}",
        target_url=reports.published_link(settings, model, ref),
    )
    uow.emit(
        events.PipelinePublished(
            model=model,
            pipeline=pipeline,
            version=ref.version,
            commit=push.after,
            package_uri=ref.package_uri,
            pipeline_id=ref.pipeline_id,
            version_id=ref.version_id,
            author=push.author.username,
        )
    )
    log.info("pipeline published", model=model, pipeline=pipeline, version=ref.version)


async def _build(
    push: events.CodePushed,
    policy: Policy,
    workspace: Path,
    code_host: CodeHost,
    orchestrator: Orchestrator,
    settings: Settings,
) -> PipelineRef | str:
    """The published version, or why there is none: the compile error or the orchestrator's refusal."""
    assert policy.training is not None
    version = triggers.short_commit(push.after)
    package = workspace / f"{version}.yaml"
    error = await _compile_at(push.project, push.after, policy, package, workspace, code_host, settings)
    if error is not None:
        return error
    try:
        return await orchestrator.publish(policy.training.pipeline, version, package)
    except PermanentError as e:  # outages still raise and are retried
        return f"the orchestrator refused the compiled package: {e}"


async def _check(
    change: events.MergeRequestChanged, policy: Policy, settings: Settings, code_host: CodeHost
) -> None:
    assert policy.training is not None
    model, pipeline = policy.model, policy.training.pipeline
    name = reports.status_name(model)
    await code_host.set_commit_status(
        change.project, change.commit, "pending", name=name, description=f"compiling pipeline {pipeline}"
    )
    async with _workspace() as workspace:
        package = workspace / "check.yaml"
        error = await _compile_at(
            change.project, change.commit, policy, package, workspace, code_host, settings
        )
    if error is None:
        state, description, link = "success", f"pipeline {pipeline} compiles", ""
    else:
        state, link = "failed", reports.failure_link(settings, model)
        description = reports.one_line(f"does not compile: {error}")
    await code_host.set_commit_status(
        change.project, change.commit, state, name=name, description=description, target_url=link
    )
    await code_host.upsert_merge_request_note(
        change.project,
        change.iid,
        reports.note_marker(model),
        reports.merge_request_note(model, pipeline, change.commit, error),
    )


async def _compile_at(
    project: str,
    commit: str,
    policy: Policy,
    package: Path,
    workspace: Path,
    code_host: CodeHost,
    settings: Settings,
) -> str | None:
    """Fetch the pipeline folder at `commit` and compile it into `package`; the error text, or None."""
    try:
        folder = await code_host.fetch_tree(
            project, commit, triggers.pipeline_folder(policy), workspace / "src"
        )
        await compile_in_child(folder, package, settings.build_timeout_s)
    except NotFound as e:
        return f"no pipeline at this commit: {e}"
    except CompileError as e:
        return str(e).replace(str(workspace / "src") + "/", "")
    return None


async def _apply_features(
    push: events.CodePushed, policy: Policy, uow: UnitOfWork, settings: Settings, code_host: CodeHost
) -> None:
    """`feast apply` of the pushed feature repository; FeaturesApplied, or a failed status and a notice."""
    assert policy.features is not None
    model, path = policy.model, policy.features.path
    name = reports.features_status_name(model)
    await code_host.set_commit_status(
        push.project, push.after, "pending", name=name, description=f"feast apply {path}"
    )
    async with _workspace() as workspace:
        outcome = await _feast_at(push.project, push.after, policy, workspace, code_host, settings, "apply")
    if isinstance(outcome, str):
        await code_host.set_commit_status(
            push.project,
            push.after,
            "failed",
            name=name,
            description=reports.one_line(f"not applied: {outcome}"),
        )
        message = f"feast apply of {path} at {push.after[:8]} failed: {outcome}"
        uow.emit(events.NoticeRaised(model=model, message=message))
        return
    config, result = outcome
    await code_host.set_commit_status(
        push.project,
        push.after,
        "success",
        name=name,
        description=reports.one_line(f"applied: {'; '.join(result.changes) or 'no changes'}"),
    )
    uow.emit(
        events.FeaturesApplied(
            model=model,
            project=push.project,
            commit=push.after,
            path=path,
            feast_project=str(config["project"]),
            registry=feast.registry_label(config),
            changes=result.changes,
            author=push.author.username,
        )
    )
    log.info("feature repository applied", model=model, path=path, changes=len(result.changes))


async def _plan_features(
    change: events.MergeRequestChanged, policy: Policy, settings: Settings, code_host: CodeHost
) -> None:
    """`feast plan` of the merge request's feature repository, as a commit status and one note."""
    assert policy.features is not None
    model, path = policy.model, policy.features.path
    name = reports.features_status_name(model)
    await code_host.set_commit_status(
        change.project, change.commit, "pending", name=name, description=f"feast plan {path}"
    )
    async with _workspace() as workspace:
        outcome = await _feast_at(
            change.project, change.commit, policy, workspace, code_host, settings, "plan"
        )
    if isinstance(outcome, str):
        state, description, plan, error = "failed", f"does not plan: {outcome}", None, outcome
    else:
        changes = outcome[1].changes
        state, plan, error = "success", outcome[1].output, None
        description = f"plan: {'; '.join(changes)}" if changes else "plan: no changes"
    await code_host.set_commit_status(
        change.project, change.commit, state, name=name, description=reports.one_line(description)
    )
    await code_host.upsert_merge_request_note(
        change.project,
        change.iid,
        reports.features_note_marker(model),
        reports.features_note(model, path, change.commit, plan, error),
    )


async def _feast_at(
    project: str,
    commit: str,
    policy: Policy,
    workspace: Path,
    code_host: CodeHost,
    settings: Settings,
    command: Literal["plan", "apply"],
) -> tuple[dict[str, Any], feast.Outcome] | str:
    """Fetch the feature repository at `commit` and run Feast on it: its configuration as run and the
    outcome, or why it failed."""
    assert policy.features is not None
    state_dir = settings.home / "feast" / policy.model
    try:
        repo = await code_host.fetch_tree(project, commit, policy.features.path, workspace / "src")
        config = await asyncio.to_thread(feast.prepare, repo, policy.features.registry, state_dir)
        run = feast.plan if command == "plan" else feast.apply
        return config, await run(repo, settings.feast_bin, settings.feast_timeout_s)
    except NotFound as e:
        return f"no feature repository at this commit: {e}"
    except feast.FeastFailed as e:
        return str(e)


@asynccontextmanager
async def _workspace() -> AsyncIterator[Path]:
    folder = await asyncio.to_thread(_new_workspace)
    try:
        yield folder
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


def _new_workspace() -> Path:
    return Path(tempfile.mkdtemp(prefix="mlcd-build-")).resolve()


SERVICE = ServiceSpec(
    "builder",
    {
        events.CodePushed: [on_code_pushed],
        events.MergeRequestChanged: [on_merge_request_changed],
    },
)
