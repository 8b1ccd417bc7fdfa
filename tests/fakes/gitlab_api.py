"""A fake of GitLab's REST API v4, enough for python-gitlab to work against it unchanged.

It follows GitLab's paths and payload shapes for what mlcd uses: projects by id or URL-encoded path,
commit statuses (with GitLab's refusal of a repeated pending/running transition), merge-request notes,
commit comments, repository tree and raw files at a ref, project members including inherited ones,
users by name, `/version` and `/user`; merge requests of a commit, a merge request's diffs (paginated) and
its approvals. It records every call and can be told to fail the next requests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support import processes

Json = Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # decoded, after /api/v4, e.g. /projects/ml/wine-quality/statuses/abc
    query: dict[str, str]
    body: Json


@dataclass
class _Project:
    id: int
    path: str
    default_branch: str
    trees: dict[str | None, dict[str, bytes]] = field(default_factory=dict)  # ref (None: any) → files
    members: dict[int, int] = field(default_factory=dict)  # user id → access level
    merge_requests: dict[int, dict[str, Json]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Json]]] = field(default_factory=dict)  # sha → statuses, oldest first
    notes: dict[int, list[dict[str, Json]]] = field(default_factory=dict)  # MR iid → notes
    comments: dict[str, list[dict[str, Json]]] = field(default_factory=dict)  # sha → commit comments
    issues: list[dict[str, Json]] = field(default_factory=list)
    diffs: dict[int, list[dict[str, Json]]] = field(default_factory=dict)  # MR iid → its diff, file by file
    approvals: dict[int, list[int]] = field(default_factory=dict)  # MR iid → ids of users who approve it


class _Reply(Exception):
    def __init__(self, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeGitLab:
    """Start with `start()` (or as a context manager); `url` is the base URL python-gitlab takes."""

    VERSION = "17.5.0"

    def __init__(self, token: str = "glpat-fake-token", bot_username: str = "mlcd-bot") -> None:
        self.token = token
        self.calls: list[Call] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._projects: dict[int, _Project] = {}
        self._users: dict[int, str] = {}
        self._failures: list[int] = []
        self.hang = False  # while set, every request waits without an answer, like a GitLab that hangs
        self.bot_id = self.add_user(bot_username)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- seeding and inspection -----------------------------------------------------------------

    def add_user(self, username: str) -> int:
        with self._lock:
            user_id = next(self._ids)
            self._users[user_id] = username
            return user_id

    def add_project(
        self,
        path: str,
        *,
        files: dict[str, bytes | str] | None = None,
        default_branch: str = "main",
    ) -> int:
        """A project whose files (at any ref unless `set_files` names the ref) are `files`."""
        with self._lock:
            project = _Project(id=next(self._ids), path=path, default_branch=default_branch)
            project.trees[None] = _encoded(files or {})
            self._projects[project.id] = project
            return project.id

    def set_files(self, project: str, ref: str, files: dict[str, bytes | str]) -> None:
        with self._lock:
            self._project(project).trees[ref] = _encoded(files)

    def _user_id(self, username: str) -> int:
        user_id = next((i for i, name in self._users.items() if name == username), None)
        return self.add_user(username) if user_id is None else user_id

    def add_member(self, project: str, username: str, access_level: int) -> None:
        user_id = self._user_id(username)
        with self._lock:
            self._project(project).members[user_id] = access_level

    def add_merge_request(
        self,
        project: str,
        iid: int,
        *,
        source_branch: str = "feature",
        sha: str = "",
        author: str = "mr-author",
        state: str = "opened",
        merge_commit_sha: str | None = None,
        changed_paths: list[str] | None = None,
    ) -> None:
        """A merge request whose head is `sha`; its diff names `changed_paths` (default: the files whose
        content at `sha` differs from the default branch's, or every file when `sha` has no files of its
        own, so a test that says nothing about the diff sees a merge request that may touch anything)."""
        author_id = self._user_id(author)
        with self._lock:
            found = self._project(project)
            found.merge_requests[iid] = {
                "id": next(self._ids),
                "iid": iid,
                "project_id": found.id,
                "title": f"Change {iid}",
                "state": state,
                "source_branch": source_branch,
                "target_branch": found.default_branch,
                "sha": sha,
                "merge_commit_sha": merge_commit_sha,
                "squash_commit_sha": None,
                "author": self._user(author_id),
                "web_url": f"{self.url}/{found.path}/-/merge_requests/{iid}",
            }
            base = found.trees.get(found.default_branch, found.trees[None])
            if changed_paths is not None:
                found.diffs[iid] = [_diff(path) for path in changed_paths]
            elif sha in found.trees:
                found.diffs[iid] = _tree_diff(found.trees[sha], base)
            else:
                found.diffs[iid] = [_diff(path) for path in sorted(base)]
            found.approvals[iid] = []

    def approve_merge_request(self, project: str, iid: int, username: str) -> None:
        user_id = self._user_id(username)
        with self._lock:
            found = self._project(project)
            self._merge_request(found, str(iid))
            if user_id not in found.approvals[iid]:
                found.approvals[iid].append(user_id)

    def statuses(self, project: str, sha: str) -> list[dict[str, Json]]:
        with self._lock:
            return [dict(s) for s in self._project(project).statuses.get(sha, [])]

    def notes(self, project: str, iid: int) -> list[dict[str, Json]]:
        with self._lock:
            return [dict(n) for n in self._project(project).notes.get(iid, [])]

    def commit_comments(self, project: str, sha: str) -> list[dict[str, Json]]:
        with self._lock:
            return [dict(c) for c in self._project(project).comments.get(sha, [])]

    def issues(self, project: str) -> list[dict[str, Json]]:
        with self._lock:
            return [dict(i) for i in self._project(project).issues]

    def fail_next(self, count: int, status: int = 502) -> None:
        """Answer the next `count` requests with `status` (an outage or an overloaded GitLab)."""
        with self._lock:
            self._failures.extend([status] * count)

    def calls_to(self, method: str, path_suffix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(path_suffix)]

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeGitLab:
        port = processes.free_port()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def do_PUT(self) -> None:
                fake._serve(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gitlab", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.hang = False
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------------------

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(request.path)
        raw_segments = [s for s in split.path.split("/") if s]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = _parse_body(request.rfile.read(length), request.headers.get("Content-Type", ""))
        segments = [unquote(s) for s in raw_segments]
        self.calls.append(Call(method, "/" + "/".join(segments[2:]), query, body))
        while self.hang:
            time.sleep(0.05)
        try:
            with self._lock:
                if self._failures:
                    raise _Reply(self._failures.pop(0), {"message": "fake outage"})
            if segments[:2] != ["api", "v4"]:
                raise _Reply(404, {"error": "404 Not Found"})
            if not self._authorised(request):
                raise _Reply(401, {"message": "401 Unauthorized"})
            with self._lock:
                reply = self._route(method, segments[2:], query, body, split.path)
        except _Reply as r:
            reply = r
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        request.send_response(reply.status)
        content_type = "application/octet-stream" if isinstance(reply.body, bytes) else "application/json"
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)

    def _authorised(self, request: BaseHTTPRequestHandler) -> bool:
        given = request.headers.get("PRIVATE-TOKEN") or ""
        bearer = request.headers.get("Authorization") or ""
        return given == self.token or bearer == f"Bearer {self.token}"

    def _route(self, method: str, seg: list[str], query: dict[str, str], body: Json, raw_path: str) -> _Reply:
        match (method, seg):
            case ("GET", ["version"]):
                return _Reply(200, {"version": self.VERSION, "revision": "fake", "enterprise": False})
            case ("GET", ["user"]):
                return _Reply(200, self._user(self.bot_id))
            case ("GET", ["users"]):
                wanted = query.get("username")
                found = [self._user(i) for i, name in self._users.items() if wanted in (None, name)]
                return self._page(found, query, raw_path)
            case ("GET", ["projects", ref]):
                project = self._project(ref)
                return _Reply(200, self._project_json(project))
            case ("POST", ["projects", ref, "statuses", sha]):
                return self._create_status(self._project(ref), sha, body)
            case ("GET", ["projects", ref, "repository", "commits", sha, "statuses"]):
                return self._page(list(self._project(ref).statuses.get(sha, [])), query, raw_path)
            case ("GET", ["projects", ref, "repository", "commits", sha, "comments"]):
                return self._page(list(self._project(ref).comments.get(sha, [])), query, raw_path)
            case ("POST", ["projects", ref, "repository", "commits", sha, "comments"]):
                comment = {
                    "note": body.get("note", ""),
                    "author": self._user(self.bot_id),
                    "created_at": _now(),
                }
                self._project(ref).comments.setdefault(sha, []).append(comment)
                return _Reply(201, comment)
            case ("GET", ["projects", ref, "repository", "commits", sha, "merge_requests"]):
                # GitLab lists the merge requests whose commits, merge commit or squash commit it is
                project = self._project(ref)
                found = [
                    mr
                    for mr in project.merge_requests.values()
                    if sha in (mr["sha"], mr["merge_commit_sha"], mr["squash_commit_sha"])
                ]
                return self._page(found, query, raw_path)
            case ("GET", ["projects", ref, "merge_requests", iid]):
                return _Reply(200, self._merge_request(self._project(ref), iid))
            case ("GET", ["projects", ref, "merge_requests", iid, "diffs"]):
                project = self._project(ref)
                self._merge_request(project, iid)
                return self._page(list(project.diffs.get(int(iid), [])), query, raw_path)
            case ("GET", ["projects", ref, "merge_requests", iid, "approvals"]):
                project = self._project(ref)
                mr = self._merge_request(project, iid)
                approvers = project.approvals.get(int(iid), [])
                return _Reply(
                    200,
                    {
                        "id": mr["id"],
                        "iid": mr["iid"],
                        "project_id": project.id,
                        "title": mr["title"],
                        "state": mr["state"],
                        "approved": bool(approvers),
                        "approvals_required": 0,
                        "approvals_left": 0,
                        "approved_by": [{"user": self._user(user_id)} for user_id in approvers],
                    },
                )
            case ("GET", ["projects", ref, "merge_requests", iid, "notes"]):
                project = self._project(ref)
                self._merge_request(project, iid)
                return self._page(list(project.notes.get(int(iid), [])), query, raw_path)
            case ("POST", ["projects", ref, "merge_requests", iid, "notes"]):
                return self._create_note(self._project(ref), iid, body)
            case ("GET", ["projects", ref, "merge_requests", iid, "notes", note_id]):
                return _Reply(200, self._note(self._project(ref), iid, note_id))
            case ("PUT", ["projects", ref, "merge_requests", iid, "notes", note_id]):
                note = self._note(self._project(ref), iid, note_id)
                note.update(body=body.get("body", note["body"]), updated_at=_now())
                return _Reply(200, note)
            case ("GET", ["projects", ref, "repository", "tree"]):
                return self._tree(self._project(ref), query, raw_path)
            case ("GET", ["projects", ref, "repository", "files", file_path, "raw"]):
                files = self._files_at(self._project(ref), query.get("ref"))
                if file_path not in files:
                    raise _Reply(404, {"message": "404 File Not Found"})
                return _Reply(200, files[file_path])
            case ("GET", ["projects", ref, "members", "all", user_id]):
                return self._member(self._project(ref), user_id)
            case ("GET", ["projects", ref, "issues"]):
                # GET /projects/:id/issues?search=…&in=title,description: substring search, as GitLab's
                wanted = query.get("search", "")
                fields = (query.get("in") or "title,description").split(",")
                found = [
                    issue
                    for issue in self._project(ref).issues
                    if not wanted or any(wanted in str(issue.get(name) or "") for name in fields)
                ]
                return self._page(found, query, raw_path)
            case ("POST", ["projects", ref, "issues"]):
                project = self._project(ref)
                number = len(project.issues) + 1
                issue = {
                    "id": next(self._ids),
                    "iid": number,
                    "project_id": project.id,
                    "title": body.get("title", ""),
                    "description": body.get("description", ""),
                    "labels": [label for label in str(body.get("labels") or "").split(",") if label],
                    "state": "opened",
                    "author": self._user(self.bot_id),
                    "created_at": _now(),
                    "web_url": f"{self.url}/{project.path}/-/issues/{number}",
                }
                project.issues.append(issue)
                return _Reply(201, issue)
        raise _Reply(404, {"error": "404 Not Found"})

    # --- resources ------------------------------------------------------------------------------

    def _project(self, ref: str) -> _Project:
        project = self._projects.get(int(ref)) if ref.isdigit() else None
        project = project or next((p for p in self._projects.values() if p.path == ref), None)
        if project is None:
            raise _Reply(404, {"message": "404 Project Not Found"})
        return project

    def _project_json(self, project: _Project) -> dict[str, Json]:
        return {
            "id": project.id,
            "path_with_namespace": project.path,
            "path": project.path.rsplit("/", 1)[-1],
            "name": project.path.rsplit("/", 1)[-1],
            "default_branch": project.default_branch,
            "web_url": f"{self.url}/{project.path}",
        }

    def _user(self, user_id: int) -> dict[str, Json]:
        username = self._users[user_id]
        return {"id": user_id, "username": username, "name": username.title(), "state": "active"}

    def _create_status(self, project: _Project, sha: str, body: Json) -> _Reply:
        state = body.get("state")
        if state not in {"pending", "running", "success", "failed", "canceled", "skipped"}:
            raise _Reply(400, {"message": "state is missing, state does not have a valid value"})
        name = body.get("name") or body.get("context") or "default"
        history = project.statuses.setdefault(sha, [])
        latest = next((s for s in reversed(history) if s["name"] == name), None)
        if latest is not None and latest["status"] == state and state in {"pending", "running"}:
            verb = "enqueue" if state == "pending" else "run"
            raise _Reply(400, {"message": f"Cannot transition status via :{verb} from :{state}"})
        status = {
            "id": next(self._ids),
            "sha": sha,
            "ref": body.get("ref") or project.default_branch,
            "status": state,
            "name": name,
            "target_url": body.get("target_url"),
            "description": body.get("description"),
            "created_at": _now(),
            "author": self._user(self.bot_id),
        }
        history.append(status)
        return _Reply(201, status)

    def _merge_request(self, project: _Project, iid: str) -> dict[str, Json]:
        found = project.merge_requests.get(int(iid)) if iid.isdigit() else None
        if found is None:
            raise _Reply(404, {"message": "404 Not found"})
        return found

    def _create_note(self, project: _Project, iid: str, body: Json) -> _Reply:
        self._merge_request(project, iid)
        if not body.get("body"):
            raise _Reply(400, {"message": {"note": ["can't be blank"]}})
        note = {
            "id": next(self._ids),
            "body": body["body"],
            "author": self._user(self.bot_id),
            "created_at": _now(),
            "updated_at": _now(),
            "system": False,
            "noteable_type": "MergeRequest",
            "noteable_iid": int(iid),
        }
        project.notes.setdefault(int(iid), []).append(note)
        return _Reply(201, note)

    def _note(self, project: _Project, iid: str, note_id: str) -> dict[str, Json]:
        self._merge_request(project, iid)
        found = next((n for n in project.notes.get(int(iid), []) if str(n["id"]) == note_id), None)
        if found is None:
            raise _Reply(404, {"message": "404 Not found"})
        return found

    def _files_at(self, project: _Project, ref: str | None) -> dict[str, bytes]:
        ref = ref or project.default_branch
        files = project.trees.get(ref, project.trees.get(None))
        if files is None:
            raise _Reply(404, {"message": "404 Tree Not Found"})
        return files

    def _tree(self, project: _Project, query: dict[str, str], raw_path: str) -> _Reply:
        files = self._files_at(project, query.get("ref"))
        base = query.get("path", "").strip("/")
        prefix = f"{base}/" if base else ""
        recursive = query.get("recursive", "").lower() in {"true", "1", "t", "yes"}
        entries: dict[str, str] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                entries.setdefault(prefix + "/".join(parts[:depth]), "tree")
            entries[path] = "blob"
        if not recursive:
            entries = {p: kind for p, kind in entries.items() if "/" not in p[len(prefix) :]}
        if base and not entries:
            raise _Reply(404, {"message": "404 Tree Not Found"})
        items = [
            {
                "id": hashlib.sha1(p.encode()).hexdigest(),
                "name": p.rsplit("/", 1)[-1],
                "type": kind,
                "path": p,
                "mode": "100644",
            }
            for p, kind in sorted(entries.items())
        ]
        return self._page(items, query, raw_path)

    def _member(self, project: _Project, user_id: str) -> _Reply:
        level = project.members.get(int(user_id)) if user_id.isdigit() else None
        if level is None:
            raise _Reply(404, {"message": "404 Not found"})
        return _Reply(200, {**self._user(int(user_id)), "access_level": level})

    def _page(self, items: list[Json], query: dict[str, str], raw_path: str) -> _Reply:
        per_page = max(1, min(100, int(query.get("per_page", 20))))
        page = max(1, int(query.get("page", 1)))
        total_pages = max(1, -(-len(items) // per_page))
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(len(items)),
            "X-Total-Pages": str(total_pages),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
        }
        if page < total_pages:
            params = "&".join(f"{k}={v}" for k, v in {**query, "page": str(page + 1)}.items())
            headers["Link"] = f'<{self.url}{raw_path}?{params}>; rel="next"'
        return _Reply(200, items[(page - 1) * per_page : page * per_page], headers)


def _diff(path: str, *, new_file: bool = False, deleted_file: bool = False) -> dict[str, Json]:
    """One file of a merge request's diff, as GET /projects/:id/merge_requests/:iid/diffs lists it."""
    return {
        "old_path": path,
        "new_path": path,
        "a_mode": "0" if new_file else "100644",
        "b_mode": "0" if deleted_file else "100644",
        "new_file": new_file,
        "renamed_file": False,
        "deleted_file": deleted_file,
        "generated_file": False,
        "diff": "",
    }


def _tree_diff(head: dict[str, bytes], base: dict[str, bytes]) -> list[dict[str, Json]]:
    changed = [_diff(p, new_file=p not in base) for p in sorted(head) if base.get(p) != head[p]]
    return changed + [_diff(p, deleted_file=True) for p in sorted(base) if p not in head]


def _encoded(files: dict[str, bytes | str]) -> dict[str, bytes]:
    return {path.strip("/"): data.encode() if isinstance(data, str) else data for path, data in files.items()}


def _parse_body(raw: bytes, content_type: str) -> Json:
    if not raw:
        return {}
    if "json" in content_type:
        return json.loads(raw)
    return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
