"""GitLab webhook bodies (push, tag push, merge request, note, pipeline) → events, per model concerned.

The fields read are those GitLab documents under "Webhook events"; everything else is ignored, so a
new GitLab field does not break parsing, while a missing documented field makes the body `Unparseable`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from mlcd import events
from mlcd.ingest.delivery import (
    Envelope,
    ModelDirectory,
    Unparseable,
    body_digest,
    envelope,
    ignored,
    load_object,
    validate,
)

ZERO_SHA = "0" * 40
_KIND_BY_OBJECT_KIND = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "note": "Note Hook",
    "pipeline": "Pipeline Hook",
}
_COMMAND = re.compile(r"^\s*/mlcd\s+(approve|reject)\s+(\S+)(?:[ \t]+(.*?))?\s*$", re.MULTILINE)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Project(_Body):
    id: int
    path_with_namespace: str
    default_branch: str | None = None


class _User(_Body):
    username: str
    name: str = ""
    email: str | None = None


class _Commit(_Body):
    id: str
    added: list[str] = Field(default_factory=list)
    modified: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)


class _Push(_Body):
    ref: str
    before: str
    after: str
    checkout_sha: str | None = None
    user_username: str
    user_name: str = ""
    user_email: str | None = None
    project: _Project
    commits: list[_Commit] = Field(default_factory=list)
    total_commits_count: int = 0

    @property
    def author(self) -> events.GitUser:
        return events.GitUser(username=self.user_username, name=self.user_name, email=self.user_email or "")


class _LastCommit(_Body):
    id: str


class _MergeRequestAttributes(_Body):
    iid: int
    action: str | None = None
    state: str = ""
    title: str = ""
    source_branch: str
    target_branch: str
    last_commit: _LastCommit | None = None
    url: str = ""


class _MergeRequest(_Body):
    user: _User
    project: _Project
    object_attributes: _MergeRequestAttributes


class _NoteAttributes(_Body):
    note: str
    noteable_type: str


class _NotedMergeRequest(_Body):
    iid: int


class _Note(_Body):
    user: _User
    project: _Project
    object_attributes: _NoteAttributes
    merge_request: _NotedMergeRequest | None = None


class _PipelineAttributes(_Body):
    id: int
    ref: str
    sha: str
    status: str


class _Pipeline(_Body):
    project: _Project
    object_attributes: _PipelineAttributes


def delivery_key(headers: Mapping[str, str], body: bytes) -> str:
    """GitLab's identity of a delivery: Idempotency-Key (stable across retries), else the event UUID."""
    return headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid") or body_digest(body)


def parse(body: bytes, headers: Mapping[str, str], models: ModelDirectory) -> list[Envelope]:
    """Events for one GitLab delivery; `headers` keys are lower case."""
    data = load_object(body)
    key = delivery_key(headers, body)
    kind = headers.get("x-gitlab-event") or _KIND_BY_OBJECT_KIND.get(str(data.get("object_kind")), "")
    if not kind:
        raise Unparseable("neither an X-Gitlab-Event header nor a known object_kind")
    if kind == "Push Hook":
        return _push(validate(_Push, data, "push hook"), key, models)
    if kind == "Tag Push Hook":
        return _tag_push(validate(_Push, data, "tag push hook"), key, models)
    if kind == "Merge Request Hook":
        return _merge_request(validate(_MergeRequest, data, "merge request hook"), key, models)
    if kind == "Note Hook":
        return [_note(validate(_Note, data, "note hook"), key)]
    if kind == "Pipeline Hook":
        return _pipeline(validate(_Pipeline, data, "pipeline hook"), key, models)
    return [ignored("gitlab", kind, f"mlcd does not act on {kind}", ("gitlab", key))]


def changed_paths(commits: list[_Commit]) -> list[str]:
    """Every path the listed commits added, modified or removed, first mention first."""
    seen: dict[str, None] = {}
    for commit in commits:
        for path in (*commit.added, *commit.modified, *commit.removed):
            seen.setdefault(path, None)
    return list(seen)


def _push(push: _Push, key: str, models: ModelDirectory) -> list[Envelope]:
    project = push.project.path_with_namespace
    branch = push.ref.removeprefix("refs/heads/")
    paths = changed_paths(push.commits)
    complete = push.total_commits_count <= len(push.commits)
    deleted = push.after == ZERO_SHA
    concerned = [
        p.model
        for p in models.for_code(project, branch)
        if p.code is not None and (deleted or not complete or any(p.code.watches(path) for path in paths))
    ]
    if not concerned:
        reason = f"no model watches {project}@{branch} for these paths"
        return [ignored("gitlab", "Push Hook", reason, ("gitlab", key), subject=project)]
    return [
        envelope(
            events.CodePushed(
                model=model,
                project=project,
                project_id=push.project.id,
                ref=push.ref,
                before=push.before,
                after=push.after,
                author=push.author,
                changed_paths=paths,
                paths_complete=complete,
                branch_deleted=deleted,
                default_branch=push.project.default_branch,
            ),
            ("gitlab", key, model),
        )
        for model in concerned
    ]


def _tag_push(push: _Push, key: str, models: ModelDirectory) -> list[Envelope]:
    project = push.project.path_with_namespace
    identity = ("gitlab", key)
    if push.after == ZERO_SHA:
        return [ignored("gitlab", "Tag Push Hook", "tag deleted", identity, subject=project)]
    concerned = [p.model for p in models.for_code(project)]
    if not concerned:
        return [ignored("gitlab", "Tag Push Hook", f"no model lives in {project}", identity, subject=project)]
    tag = push.ref.removeprefix("refs/tags/")
    commit = push.checkout_sha or push.after
    return [
        envelope(
            events.TagPushed(
                model=model,
                project=project,
                project_id=push.project.id,
                tag=tag,
                commit=commit,
                author=push.author,
            ),
            (*identity, model),
        )
        for model in concerned
    ]


def _merge_request(hook: _MergeRequest, key: str, models: ModelDirectory) -> list[Envelope]:
    project = hook.project.path_with_namespace
    mr = hook.object_attributes
    concerned = [p.model for p in models.for_code(project, mr.target_branch)]
    if not concerned:
        reason = f"no model builds from {project}@{mr.target_branch}"
        return [ignored("gitlab", "Merge Request Hook", reason, ("gitlab", key), subject=project)]
    author = events.GitUser(username=hook.user.username, name=hook.user.name, email=hook.user.email or "")
    return [
        envelope(
            events.MergeRequestChanged(
                model=model,
                project=project,
                project_id=hook.project.id,
                iid=mr.iid,
                action=mr.action or mr.state or "update",
                title=mr.title,
                source_branch=mr.source_branch,
                target_branch=mr.target_branch,
                commit=mr.last_commit.id if mr.last_commit else "",
                author=author,
                url=mr.url,
            ),
            ("gitlab", key, model),
        )
        for model in concerned
    ]


def _note(hook: _Note, key: str) -> Envelope:
    project = hook.project.path_with_namespace
    identity = ("gitlab", key)
    note = hook.object_attributes
    if note.noteable_type != "MergeRequest" or hook.merge_request is None:
        reason = f"a note on a {note.noteable_type}; mlcd reads commands on merge requests only"
        return ignored("gitlab", "Note Hook", reason, identity, subject=project)
    command = _COMMAND.search(note.note)
    if command is None:
        return ignored("gitlab", "Note Hook", "the note holds no /mlcd command", identity, subject=project)
    decision, gate_id, reason = command.group(1), command.group(2), command.group(3) or ""
    return envelope(
        events.GateDecisionRequested(
            gate_id=gate_id,
            decision="approve" if decision == "approve" else "reject",
            actor=hook.user.username,
            via="gitlab",
            reason=reason,
            project=project,
            merge_request_iid=hook.merge_request.iid,
        ),
        identity,
        subject=project,
    )


def _pipeline(hook: _Pipeline, key: str, models: ModelDirectory) -> list[Envelope]:
    project = hook.project.path_with_namespace
    pipeline = hook.object_attributes
    concerned = [p.model for p in models.for_code(project, pipeline.ref)]
    if not concerned:
        reason = f"no model builds from {project}@{pipeline.ref}"
        return [ignored("gitlab", "Pipeline Hook", reason, ("gitlab", key), subject=project)]
    return [
        envelope(
            events.GitPipelineFinished(
                model=model,
                project=project,
                project_id=hook.project.id,
                pipeline_id=pipeline.id,
                ref=pipeline.ref,
                commit=pipeline.sha,
                status=pipeline.status,
            ),
            ("gitlab", key, model),
        )
        for model in concerned
    ]
