"""Which models' pipelines a push or a merge request concerns (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

from mlcd import events
from mlcd.policy.schema import Policy

ZERO_SHA = "0" * 40
MERGE_REQUEST_ACTIONS = frozenset({"open", "reopen", "update"})


def branch_of(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


def short_commit(sha: str) -> str:
    """The version name a pipeline built from `sha` is published under (GitLab's short id)."""
    return sha[:8]


def pipeline_folder(policy: Policy) -> str:
    """The pipeline's folder in the repository, relative to its root."""
    assert policy.training is not None
    return f"pipelines/{policy.training.pipeline}"


def _touches(policy: Policy, changed: Iterable[str], complete: bool) -> bool:
    assert policy.code is not None
    return not complete or any(policy.code.watches(path) for path in changed)


def _buildable(policies: Iterable[Policy], model: str | None) -> list[Policy]:
    return [
        p
        for p in policies
        if p.code is not None and p.training is not None and (model is None or p.model == model)
    ]


def models_to_publish(push: events.CodePushed, policies: Iterable[Policy]) -> list[Policy]:
    """Policies whose pipeline this push (to their watched branch) changed, or may have changed."""
    if push.branch_deleted or push.after == ZERO_SHA:
        return []
    branch = branch_of(push.ref)
    return [
        p
        for p in _buildable(policies, push.model)
        if p.code is not None
        and p.code.branch == branch
        and _touches(p, push.changed_paths, push.paths_complete)
    ]


def models_to_check(change: events.MergeRequestChanged, policies: Iterable[Policy]) -> list[Policy]:
    """Policies whose pipeline an opened or updated merge request changes (all, when paths are unknown)."""
    if change.action not in MERGE_REQUEST_ACTIONS:
        return []
    complete = change.paths_complete or bool(change.changed_paths)
    return [p for p in _buildable(policies, change.model) if _touches(p, change.changed_paths, complete)]


def _with_features(policies: Iterable[Policy], model: str | None) -> list[Policy]:
    return [
        p
        for p in policies
        if p.code is not None and p.features is not None and (model is None or p.model == model)
    ]


def _touches_features(policy: Policy, changed: Iterable[str], complete: bool) -> bool:
    assert policy.features is not None
    return not complete or any(policy.features.touched_by(path) for path in changed)


def feature_repos_to_apply(push: events.CodePushed, policies: Iterable[Policy]) -> list[Policy]:
    """Policies whose feature repository this push (to their branch) changed, or may have changed."""
    if push.branch_deleted or push.after == ZERO_SHA:
        return []
    branch = branch_of(push.ref)
    return [
        p
        for p in _with_features(policies, push.model)
        if p.code is not None
        and p.code.branch == branch
        and _touches_features(p, push.changed_paths, push.paths_complete)
    ]


def feature_repos_to_plan(change: events.MergeRequestChanged, policies: Iterable[Policy]) -> list[Policy]:
    """Policies whose feature repository an opened or updated merge request changes (all, when its paths
    are unknown)."""
    if change.action not in MERGE_REQUEST_ACTIONS:
        return []
    complete = change.paths_complete or bool(change.changed_paths)
    return [
        p
        for p in _with_features(policies, change.model)
        if _touches_features(p, change.changed_paths, complete)
    ]
