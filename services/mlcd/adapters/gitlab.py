"""The CodeHost port: GitLab through python-gitlab, or the log when no GitLab is configured.

Every python-gitlab call runs in a worker thread with a timeout; its errors leave here as the mlcd error
tree (outages and 5xx/429 retryable, refusals permanent).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mlcd import logs
from mlcd.adapters import trace_headers
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, Conflict, NotFound, PermanentError, TemporaryError
from mlcd.ports import CodeHost, MergeRequestRef

log = logs.get(__name__)
T = TypeVar("T")

MAX_TREE_FILES = 2000
_DESCRIPTION_LIMIT = 255  # GitLab truncates longer commit status descriptions


def hidden(marker: str) -> str:
    """The marker as an HTML comment: invisible in the rendered note, findable in its source."""
    return marker if marker.startswith("<!--") else f"<!-- {marker} -->"


def with_marker(body: str, marker: str) -> str:
    tag = hidden(marker)
    return body if tag in body else f"{body}\n\n{tag}"


def _relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path.strip("/"))
    if ".." in relative.parts:
        raise PermanentError(f"refusing a path outside the repository: {path!r}")
    return relative


class GitLabCodeHost:
    """GitLab REST v4 through python-gitlab; projects are named by path (`group/project`)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._client: Any = None

    def _gitlab(self) -> Any:
        if self._client is None:
            import gitlab

            self._client = gitlab.Gitlab(
                self.url,
                private_token=self._token,
                timeout=self.timeout_s,
                retry_transient_errors=False,
                per_page=100,
                session=trace_headers.traced_session(),
            )
        return self._client

    def _project(self, project: str) -> Any:
        return self._gitlab().projects.get(project, lazy=True)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        import requests
        from gitlab.exceptions import GitlabError

        try:
            # The thread's own HTTP timeout fires first; this bound covers a call that hangs elsewhere.
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s * 2)
        except GitlabError as e:
            raise _translated(f"GitLab {what}", e) from e
        except (TimeoutError, OSError, requests.RequestException) as e:
            raise AdapterUnavailable(f"GitLab at {self.url} did not answer {what}: {e!r}") from e

    async def set_commit_status(
        self, project: str, sha: str, state: str, *, name: str, description: str = "", target_url: str = ""
    ) -> None:
        from gitlab.exceptions import GitlabCreateError

        status: dict[str, str] = {
            "state": state,
            "name": name,
            "description": description[:_DESCRIPTION_LIMIT],
        }
        if target_url:
            status["target_url"] = target_url

        def create() -> None:
            commit = self._project(project).commits.get(sha, lazy=True)
            # A handler killed after posting and before its commit posts again when it is redelivered;
            # a status the commit already carries (same name, state and text) is not added a second time.
            posted = commit.statuses.list(get_all=True, query_parameters={"all": True, "name": name})
            wanted = (name, state, status["description"])
            if any((s.name, s.status, s.description or "") == wanted for s in posted):
                return
            try:
                commit.statuses.create(status)
            except GitlabCreateError as e:
                # GitLab refuses to set pending/running twice; a retried handler meets this, and it is done.
                if e.response_code == 400 and "Cannot transition status" in str(e.error_message):
                    return
                raise

        await self._call(f"set status {state} on {project}@{sha[:8]}", create)

    async def upsert_merge_request_note(self, project: str, iid: int, marker: str, body: str) -> None:
        text = with_marker(body, marker)
        tag = hidden(marker)

        def upsert() -> None:
            merge_request = self._project(project).mergerequests.get(iid, lazy=True)
            for note in merge_request.notes.list(get_all=True):
                if tag in (note.body or "") and not getattr(note, "system", False):
                    if note.body != text:
                        note.body = text
                        note.save()
                    return
            merge_request.notes.create({"body": text})

        await self._call(f"note on {project}!{iid}", upsert)

    async def post_commit_note(self, project: str, sha: str, marker: str, body: str) -> None:
        text = with_marker(body, marker)
        tag = hidden(marker)

        def post_once() -> None:
            # A handler killed after posting is redelivered; the marker says the note is already there.
            commit = self._project(project).commits.get(sha, lazy=True)
            if any(tag in (comment.note or "") for comment in commit.comments.list(get_all=True)):
                return
            commit.comments.create({"note": text})

        await self._call(f"comment on {project}@{sha[:8]}", post_once)

    async def open_issue(self, project: str, marker: str, title: str, body: str) -> str:
        """Open an issue once per marker (a redelivered notice finds it); returns its web URL."""
        text = with_marker(body, marker)
        tag = hidden(marker)

        def open_once() -> str:
            issues = self._project(project).issues
            # GitLab's search matches words of the description; the hidden tag itself is checked after.
            found = issues.list(search=marker, query_parameters={"in": "description"}, get_all=True)
            for issue in found:
                if tag in (issue.description or ""):
                    return str(issue.web_url)
            created = issues.create({"title": title[:255], "description": text, "labels": "mlcd"})
            return str(created.web_url)

        return await self._call(f"issue in {project}", open_once)

    async def fetch_tree(self, project: str, ref: str, path: str, target: Path) -> Path:
        """Files under `path` at `ref`, written to `target/<path>/…` (their repository layout kept)."""
        base = _relative(path)

        def list_blobs() -> list[str]:
            items = self._project(project).repository_tree(
                path=str(base), ref=ref, recursive=True, get_all=True
            )
            return [str(item["path"]) for item in items if item.get("type") == "blob"]

        blobs = await self._call(f"tree {project}:{base}@{ref[:12]}", list_blobs)
        if not blobs:
            raise NotFound(f"{project} has no files under {base} at {ref}")
        if len(blobs) > MAX_TREE_FILES:
            raise PermanentError(
                f"{project}:{base} holds {len(blobs)} files, over the limit of {MAX_TREE_FILES}"
            )
        for blob in blobs:
            destination = target / _relative(blob)

            def download(blob: str = blob, destination: Path = destination) -> None:
                data = self._project(project).files.raw(file_path=blob, ref=ref)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(bytes(data))

            await self._call(f"file {project}:{blob}@{ref[:12]}", download)
        return target / base

    async def access_level(self, project: str, username: str) -> int:
        from gitlab.exceptions import GitlabGetError

        def level() -> int:
            users = self._gitlab().users.list(username=username, get_all=False)
            if not users:
                return 0
            try:
                member = self._project(project).members_all.get(users[0].id)
            except GitlabGetError as e:
                if e.response_code == 404:
                    return 0
                raise
            return int(member.access_level)

        return await self._call(f"membership of {username} in {project}", level)

    async def merge_requests_of_commit(self, project: str, sha: str) -> list[MergeRequestRef]:
        def listed() -> list[dict[str, Any]]:
            # GET /projects/:id/repository/commits/:sha/merge_requests
            commit = self._project(project).commits.get(sha, lazy=True)
            return list(commit.merge_requests(get_all=True))

        found = await self._call(f"merge requests of {project}@{sha[:8]}", listed)
        refs = [
            MergeRequestRef(
                iid=int(mr["iid"]),
                url=str(mr.get("web_url") or ""),
                author=str((mr.get("author") or {}).get("username") or ""),
                state=str(mr.get("state") or ""),
                target_branch=str(mr.get("target_branch") or ""),
            )
            for mr in found
        ]
        return sorted(refs, key=lambda ref: ref.state != "merged")

    async def merge_request_paths(self, project: str, iid: int) -> list[str] | None:
        def listed() -> list[dict[str, Any]]:
            # GET /projects/:id/merge_requests/:iid/diffs (GitLab 15.7+; /changes is deprecated), paginated
            path = f"/projects/{self._project(project).encoded_id}/merge_requests/{iid}/diffs"
            return list(self._gitlab().http_list(path, query_data={"per_page": 100}, get_all=True))

        diffs = await self._call(f"changes of {project}!{iid}", listed)
        seen: dict[str, None] = {}
        for diff in diffs:
            for key in ("old_path", "new_path"):
                if diff.get(key):
                    seen.setdefault(str(diff[key]), None)
        return list(seen)

    async def merge_request_approvers(self, project: str, iid: int) -> list[str]:
        def approvers() -> list[str]:
            # GET /projects/:id/merge_requests/:iid/approvals: `approved_by` lists who approves now
            merge_request = self._project(project).mergerequests.get(iid, lazy=True)
            state = merge_request.approvals.get()
            return [str(entry["user"]["username"]) for entry in getattr(state, "approved_by", None) or []]

        return await self._call(f"approvals of {project}!{iid}", approvers)

    async def ping(self) -> None:
        await self._call("the current user", lambda: self._gitlab().auth())


def _translated(what: str, error: Any) -> Exception:
    code = getattr(error, "response_code", None)
    message = f"{what}: {code or 'error'} {getattr(error, 'error_message', error)}"
    if code == 404:
        return NotFound(message)
    if code == 409:
        return Conflict(message)
    if code is None or code == 429 or code >= 500:
        return TemporaryError(message)
    return PermanentError(message)


class LogCodeHost:
    """The embedded default: notices go to the log; trees are copied from the local working tree."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    async def set_commit_status(
        self, project: str, sha: str, state: str, *, name: str, description: str = "", target_url: str = ""
    ) -> None:
        log.info(
            "commit status",
            project=project,
            sha=sha,
            state=state,
            name=name,
            description=description,
            target_url=target_url,
        )

    async def upsert_merge_request_note(self, project: str, iid: int, marker: str, body: str) -> None:
        log.info("merge request note", project=project, iid=iid, marker=marker, body=body)

    async def post_commit_note(self, project: str, sha: str, marker: str, body: str) -> None:
        log.info("commit note", project=project, sha=sha, marker=marker, body=body)

    async def open_issue(self, project: str, marker: str, title: str, body: str) -> str:
        log.info("issue", project=project, marker=marker, title=title, body=body)
        return ""

    async def fetch_tree(self, project: str, ref: str, path: str, target: Path) -> Path:
        """The working tree's copy of `path` (whatever is checked out; `ref` cannot be honoured here)."""
        base = _relative(path)
        source = self.root / base
        if not source.is_dir():
            raise NotFound(f"no folder {base} in the working tree {self.root}")
        destination = target / base
        await asyncio.to_thread(
            shutil.copytree,
            source,
            destination,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )
        return destination

    async def access_level(self, project: str, username: str) -> int:
        log.info("no GitLab configured: nobody holds a GitLab role", project=project, username=username)
        return 0

    async def merge_requests_of_commit(self, project: str, sha: str) -> list[MergeRequestRef]:
        return []

    async def merge_request_paths(self, project: str, iid: int) -> list[str] | None:
        return None  # unknown: the builder checks every model of the project

    async def merge_request_approvers(self, project: str, iid: int) -> list[str]:
        return []

    async def ping(self) -> None:
        return None


def build(settings: Settings) -> CodeHost:
    """GitLab when MLCD_GITLAB_URL is set, else the log, with the repository root's working tree."""
    if settings.gitlab_url:
        token = settings.gitlab_token.get_secret_value() if settings.gitlab_token else ""
        return GitLabCodeHost(settings.gitlab_url, token, timeout_s=settings.gitlab_timeout_s)
    return LogCodeHost(settings.source_root)
