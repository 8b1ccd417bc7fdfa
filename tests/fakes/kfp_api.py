"""A fake Kubeflow Pipelines API server (v2beta1 REST paths and JSON shapes) that records every call.

It serves what mlcd's `KfpClientOrchestrator` and `kfp.Client` use: healthz, pipeline upload and listing,
pipeline versions (upload, list with filter and sort, get), experiments (create, list with a filter),
runs (create, list with a `display_name` filter and a namespace, get, terminate). Runs stay RUNNING until
the test calls `finish(...)`; `hang = True` makes every call wait without answering, like a server that
accepts connections and never replies. With `token` set it answers 401 to a request without that bearer
token, as multi-user Kubeflow does. Like the real server it reports no run outputs: v2beta1 runs carry
none (tests/integration/test_kfp_fake_conformance.py checks every answer against kfp-server-api's models).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from tests.support import processes

PREFIX = "/apis/v2beta1"
_UNSET_TIME = "1970-01-01T00:00:00Z"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None = None


@dataclass
class FakeKfp:
    """State of the fake server; tests read `calls`, `runs` and call `finish`."""

    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    hang: bool = False
    url: str = ""
    token: str | None = None
    multi_user: bool = False

    def created_runs(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == f"{PREFIX}/runs"]

    def finish(
        self,
        run_id: str,
        state: str,
        *,
        failed_task: str = "",
        error: str = "",
    ) -> None:
        """End a run as SUCCEEDED, FAILED or CANCELED (what the pipeline registered is in MLflow)."""
        run = self.runs[run_id]
        run.update(state=state, finished_at=_now())
        run["state_history"].append({"update_time": _now(), "state": state})
        if state == "FAILED":
            run["error"] = {"code": 2, "message": error or "run failed"}
            task = {
                "run_id": run_id,
                "task_id": uuid.uuid4().hex,
                "display_name": failed_task or "unknown",
                "create_time": run["created_at"],
                "end_time": _now(),
                "state": "FAILED",
                "error": {"code": 2, "message": error},
            }
            root = {
                **task,
                "task_id": uuid.uuid4().hex,
                "display_name": "root",
                "child_tasks": [{"task_id": "x"}],
            }
            run["run_details"]["task_details"] = [root, task]

    def run_named(self, name: str) -> dict[str, Any]:
        return next(r for r in self.runs.values() if r["display_name"] == name)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _matches(item: dict[str, Any], raw_filter: str | None) -> bool:
    if not raw_filter:
        return True
    for predicate in json.loads(raw_filter).get("predicates", []):
        wanted = predicate.get("string_value", predicate.get("stringValue"))
        if predicate.get("operation") != "EQUALS" or item.get(predicate["key"]) != wanted:
            return False
    return True


def _listing(items: list[dict[str, Any]], request: Request, key: str) -> dict[str, Any]:
    query = request.query_params
    chosen = [i for i in items if _matches(i, query.get("filter"))]
    sort_by = query.get("sort_by", "")
    if sort_by:
        name, _, order = sort_by.partition(" ")
        chosen.sort(key=lambda i: (str(i.get(name, "")), i.get("_seq", 0)), reverse=order == "desc")
    size = int(query.get("page_size") or 0)
    page = chosen[:size] if size else chosen
    return {key: [_public(i) for i in page], "total_size": len(chosen), "next_page_token": ""}


async def _uploaded_file(request: Request) -> bytes:
    """The multipart body, checked for the `uploadfile` part KFP's upload endpoints require."""
    body = await request.body()
    if not request.headers.get("content-type", "").startswith("multipart/form-data") or (
        b'name="uploadfile"' not in body
    ):
        raise HTTPException(400, "an upload needs a multipart/form-data body with an uploadfile part")
    return body


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def app(fake: FakeKfp) -> FastAPI:
    api = FastAPI()
    seq = iter(range(1, 1_000_000))

    @api.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        fake.calls.append(
            Call(
                request.method,
                request.url.path,
                dict(request.query_params),
                request.headers.get("authorization"),
            )
        )
        while fake.hang:  # flipped from the test thread; an asyncio.Event is bound to one loop
            await asyncio.sleep(0.05)
        if fake.token is not None and request.headers.get("authorization") != f"Bearer {fake.token}":
            return JSONResponse(
                {"code": 16, "message": "Unauthenticated: no valid token", "details": []}, 401
            )
        return await call_next(request)

    @api.get(f"{PREFIX}/healthz")
    async def healthz() -> dict[str, Any]:
        return {"multi_user": fake.multi_user, "pipeline_store": "database"}

    @api.post(f"{PREFIX}/experiments")
    async def create_experiment(request: Request) -> dict[str, Any]:
        body = await request.json()
        experiment_id = str(uuid.uuid4())
        fake.experiments[experiment_id] = {
            "experiment_id": experiment_id,
            "display_name": body["display_name"],
            "description": body.get("description", ""),
            "created_at": _now(),
            "namespace": body.get("namespace") or "",
            "storage_state": "AVAILABLE",
            "last_run_created_at": _UNSET_TIME,
        }
        return fake.experiments[experiment_id]

    @api.get(f"{PREFIX}/experiments")
    async def list_experiments(request: Request) -> dict[str, Any]:
        namespace = request.query_params.get("namespace", "")
        if fake.multi_user and not namespace:
            raise HTTPException(400, "a namespace is required in multi-user mode")
        chosen = [e for e in fake.experiments.values() if e["namespace"] == namespace]
        return _listing(chosen, request, "experiments")

    def new_version(pipeline_id: str, name: str, filename: str) -> dict[str, Any]:
        version_id = str(uuid.uuid4())
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
            "display_name": name,
            "name": name,
            "created_at": _now(),
            "package_url": {"pipeline_url": f"{fake.url}/packages/{version_id}/{filename}"},
            "_seq": next(seq),
        }
        fake.versions[version_id] = version
        return version

    @api.post(f"{PREFIX}/pipelines/upload")
    async def upload(request: Request) -> dict[str, Any]:
        name = request.query_params.get("display_name") or request.query_params.get("name") or "pipeline"
        if any(p["display_name"] == name for p in fake.pipelines.values()):
            raise HTTPException(409, f"pipeline {name} already exists")
        await _uploaded_file(request)
        pipeline_id = str(uuid.uuid4())
        fake.pipelines[pipeline_id] = {
            "pipeline_id": pipeline_id,
            "display_name": name,
            "name": name,
            "created_at": _now(),
        }
        new_version(pipeline_id, name, "pipeline.yaml")
        return fake.pipelines[pipeline_id]

    @api.post(f"{PREFIX}/pipelines/upload_version")
    async def upload_version(request: Request) -> dict[str, Any]:
        pipeline_id = request.query_params.get("pipelineid", "")
        if pipeline_id not in fake.pipelines:
            raise HTTPException(404, f"pipeline {pipeline_id} not found")
        await _uploaded_file(request)
        name = request.query_params.get("display_name") or request.query_params.get("name") or "version"
        return _public(new_version(pipeline_id, name, "pipeline.yaml"))

    @api.get(f"{PREFIX}/pipelines")
    async def list_pipelines(request: Request) -> dict[str, Any]:
        return _listing(list(fake.pipelines.values()), request, "pipelines")

    @api.get(PREFIX + "/pipelines/{pipeline_id}/versions")
    async def list_versions(pipeline_id: str, request: Request) -> dict[str, Any]:
        versions = [v for v in fake.versions.values() if v["pipeline_id"] == pipeline_id]
        return _listing(versions, request, "pipeline_versions")

    @api.get(PREFIX + "/pipelines/{pipeline_id}/versions/{version_id}")
    async def get_version(pipeline_id: str, version_id: str) -> dict[str, Any]:
        if version_id not in fake.versions:
            raise HTTPException(404, f"pipeline version {version_id} not found")
        return _public(fake.versions[version_id])

    @api.post(f"{PREFIX}/runs")
    async def create_run(request: Request) -> dict[str, Any]:
        body = await request.json()
        reference = body.get("pipeline_version_reference") or {}
        if reference.get("pipeline_version_id") not in fake.versions:
            raise HTTPException(400, "pipeline_version_reference names no known pipeline version")
        experiment_id = body.get("experiment_id")
        if fake.multi_user and experiment_id not in fake.experiments:
            raise HTTPException(400, "a run needs an experiment of its namespace in multi-user mode")
        run_id = str(uuid.uuid4())
        fake.runs[run_id] = {
            "experiment_id": experiment_id or "default",
            "run_id": run_id,
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "pipeline_version_reference": reference,
            "runtime_config": body.get("runtime_config") or {},
            "created_at": _now(),
            "scheduled_at": _now(),
            "finished_at": _UNSET_TIME,
            "state": "RUNNING",
            "state_history": [{"update_time": _now(), "state": "RUNNING"}],
            "run_details": {"task_details": []},
        }
        return fake.runs[run_id]

    @api.get(f"{PREFIX}/runs")
    async def list_runs(request: Request) -> dict[str, Any]:
        namespace = request.query_params.get("namespace", "")
        if fake.multi_user and not namespace and not request.query_params.get("experiment_id"):
            raise HTTPException(400, "a namespace or experiment_id is required in multi-user mode")
        return _listing(list(fake.runs.values()), request, "runs")

    @api.post(PREFIX + "/runs/{run_id}:terminate")
    async def terminate_run(run_id: str) -> Any:
        if run_id not in fake.runs:
            return JSONResponse({"code": 5, "message": f"run {run_id} not found", "details": []}, 404)
        run = fake.runs[run_id]
        if run["state"] not in {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}:
            run.update(state="CANCELING")
            run["state_history"].append({"update_time": _now(), "state": "CANCELING"})
            fake.finish(run_id, "CANCELED")  # the workflow's pods are gone at once here
        return {}

    @api.get(PREFIX + "/runs/{run_id}")
    async def get_run(run_id: str) -> Any:
        if run_id not in fake.runs:
            return JSONResponse({"code": 5, "message": f"run {run_id} not found", "details": []}, 404)
        return fake.runs[run_id]

    return api


@contextmanager
def serve() -> Iterator[FakeKfp]:
    """Run the fake on a free loopback port in a background thread; stopped when the block ends."""
    fake = FakeKfp()
    port = processes.free_port()
    fake.url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(app(fake), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-kfp", daemon=True)
    thread.start()
    processes.wait_until(lambda: server.started, 10, "fake KFP API")
    try:
        yield fake
    finally:
        fake.hang = False
        server.should_exit = True
        thread.join(10)
