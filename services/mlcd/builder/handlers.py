"""The builder: a push that changes a model's pipeline compiles and publishes it; a merge request is checked.

Each build reports on the commit (pending, then success with a link or failed) and, for a merge request,
in one note that later pushes edit in place. A pipeline that does not compile is a normal outcome
(`PipelineBuildFailed`), never an error of the service; outages of GitLab or KFP are retried.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mlcd import events, logs
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


async def on_merge_request_changed(
    event: events.Envelope[events.MergeRequestChanged],
    uow: UnitOfWork,
    *,
    settings: Settings,
    policies: PolicyBook,
    code_host: CodeHost,
) -> None:
    change = event.data
    for policy in triggers.models_to_check(change, policies.for_code(change.project)):
        await _check(change, policy, settings, code_host)


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
