"""The Orchestrator port twice: Kubeflow Pipelines through `kfp.Client`, and the embedded `kfp.local` runner.

`KfpClientOrchestrator` talks to a KFP API server (v2beta1); every call runs in a worker thread under a
timeout, and kfp_server_api's REST client gets a default request timeout (it would otherwise wait forever
on a server that accepts and never answers). Pipelines are found by display name, versions are named after
the commit, runs by display name. In multi-user Kubeflow it sends the service-account token (reread on
every call, as the kubelet rotates it), lists runs in its profile namespace and files them under one
experiment there, created on first use. A cluster run reports no outputs: the v2beta1 API carries no
parameter outputs (`plugins_output` holds what KFP's own plugins report, not the pipeline's), so the
trainer finds the registered version in MLflow by the alias and tag the pipeline sets.

`LocalOrchestrator` keeps compiled packages under MLCD_HOME/pipelines/<pipeline>/<version>.yaml and runs
them with `kfp.local`'s SubprocessRunner in a separate worker process (`mlcd.adapters.kfp_local_worker`),
so the event loop never blocks. `PipelineRef.package_uri` is the compiled YAML: the local runner runs that
very package (its components' source is inside it), so the pipeline's Python source is only needed to
compile. Each run's state lives in MLCD_HOME/runs/<run name>.json (written by the worker, atomically): a
restarted mlcd finds its runs, and a second submit under the same name returns the first run. S3
credentials reach the worker through its environment only, never a run parameter or a state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from mlcd import logs
from mlcd.adapters import kfp_compiler, retry_after, trace_headers
from mlcd.adapters import kfp_local_worker as worker
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, MlcdError, NotFound, PermanentError
from mlcd.ports import Orchestrator, PipelineRef, Run

log = logs.get(__name__)
T = TypeVar("T")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_FINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
REAP_TIMEOUT_S = 5.0  # how long a worker that reported its result may take to exit


# --- Kubeflow Pipelines API -----------------------------------------------------------------------


class KfpClientOrchestrator:
    """Pipelines, versions and runs on a Kubeflow Pipelines API server."""

    def __init__(
        self,
        host: str,
        timeout_s: float = 30.0,
        *,
        namespace: str | None = None,
        experiment: str | None = None,
        token_path: Path | None = None,
    ) -> None:
        self.host = host
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.experiment = experiment
        self.token_path = token_path
        self._experiment_id: str | None = None
        self._client: Any = None

    async def publish(self, pipeline: str, version: str, package: Path) -> PipelineRef:
        def upload() -> PipelineRef:
            client = self._kfp()
            pipeline_id = self._pipeline_id(pipeline)
            if pipeline_id is None:
                created = client._upload_api.upload_pipeline(
                    uploadfile=str(package), name=pipeline, display_name=pipeline
                )
                pipeline_id = created.pipeline_id
            existing = self._versions(pipeline_id, filter=_equals("display_name", version), page_size=1)
            if existing:
                return _pipeline_ref(pipeline, existing[0])
            uploaded = client._upload_api.upload_pipeline_version(
                uploadfile=str(package), name=version, display_name=version, pipelineid=pipeline_id
            )
            return _pipeline_ref(pipeline, uploaded)

        return await self._call(f"publish {pipeline} {version}", upload)

    async def latest(self, pipeline: str) -> PipelineRef | None:
        def newest() -> PipelineRef | None:
            pipeline_id = self._pipeline_id(pipeline)
            if pipeline_id is None:
                return None
            versions = self._versions(pipeline_id, sort_by="created_at desc", page_size=1)
            return _pipeline_ref(pipeline, versions[0]) if versions else None

        return await self._call(f"find the newest version of {pipeline}", newest)

    async def find_run(self, name: str) -> Run | None:
        def lookup() -> Run | None:
            found = self._kfp()._run_api.run_service_list_runs(
                filter=_equals("display_name", name), page_size=1, **self._in_namespace()
            )
            runs = found.runs or []
            return _run(runs[0]) if runs else None

        return await self._call(f"look up run {name}", lookup)

    async def submit(self, name: str, pipeline: PipelineRef, parameters: dict[str, Any]) -> Run:
        def create() -> Run:
            import kfp_server_api as api

            body = api.V2beta1Run(
                display_name=name,
                experiment_id=self._experiment(),
                pipeline_version_reference=api.V2beta1PipelineVersionReference(
                    pipeline_id=pipeline.pipeline_id, pipeline_version_id=pipeline.version_id
                ),
                runtime_config=api.V2beta1RuntimeConfig(parameters=parameters),
            )
            return _run(self._kfp()._run_api.run_service_create_run(run=body))

        return await self._call(f"start run {name}", create)

    async def get_run(self, run_id: str) -> Run:
        return await self._call(
            f"read run {run_id}", lambda: _run(self._kfp()._run_api.run_service_get_run(run_id))
        )

    async def terminate_run(self, run_id: str) -> None:
        """Stop a run on KFP (its pods are deleted, it ends CANCELED); a finished run stays as it is."""

        def terminate() -> None:
            run = self._kfp()._run_api.run_service_get_run(run_id)
            if str(run.state or "") not in _FINAL:
                self._kfp()._run_api.run_service_terminate_run(run_id)

        await self._call(f"terminate run {run_id}", terminate)

    async def ping(self) -> None:
        await self._call("health check", lambda: self._kfp()._healthz_api.healthz_service_get_healthz())

    # -- plumbing --

    def _kfp(self) -> Any:
        if self._client is None:
            self._client = _timed_client(self.host, self.timeout_s, self.namespace, self.token_path)
        return self._client

    def _in_namespace(self) -> dict[str, str]:
        return {"namespace": self.namespace} if self.namespace else {}

    def _experiment(self) -> str | None:
        """The id of the configured experiment, created in the namespace when it does not exist yet."""
        if self.experiment is None or self._experiment_id is not None:
            return self._experiment_id
        import kfp_server_api as api

        experiments = self._kfp()._experiment_api
        found = experiments.experiment_service_list_experiments(
            filter=_equals("display_name", self.experiment), page_size=1, **self._in_namespace()
        ).experiments
        if found:
            self._experiment_id = str(found[0].experiment_id)
        else:
            created = experiments.experiment_service_create_experiment(
                api.V2beta1Experiment(display_name=self.experiment, namespace=self.namespace)
            )
            self._experiment_id = str(created.experiment_id)
        return self._experiment_id

    def _pipeline_id(self, pipeline: str) -> str | None:
        found = self._kfp()._pipelines_api.pipeline_service_list_pipelines(
            filter=_equals("display_name", pipeline), page_size=2
        )
        pipelines = found.pipelines or []
        if len(pipelines) > 1:
            raise PermanentError(
                f"KFP has {len(pipelines)} pipelines named {pipeline!r}; names must be unique"
            )
        return str(pipelines[0].pipeline_id) if pipelines else None

    def _versions(self, pipeline_id: str, **query: Any) -> list[Any]:
        found = self._kfp()._pipelines_api.pipeline_service_list_pipeline_versions(pipeline_id, **query)
        return list(found.pipeline_versions or [])

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s + 5)
        except MlcdError:
            raise
        except TimeoutError as e:
            raise AdapterUnavailable(f"KFP at {self.host} did not answer in time to {what}") from e
        except Exception as e:  # the SDK raises ApiException, urllib3 and socket errors alike
            if _timed_out(e):
                raise AdapterUnavailable(
                    f"KFP at {self.host} did not answer within {self.timeout_s:g}s (timeout) to {what}"
                ) from e
            raise _translated(self.host, what, e) from e


def _timed_client(host: str, timeout_s: float, namespace: str | None, token_path: Path | None) -> Any:
    """A kfp.Client whose every request, the constructor's health check included, has a timeout; with a
    token file, every request carries its current content as the bearer token."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    timeout = (min(timeout_s, 10.0), timeout_s)

    class TimedClient(kfp.Client):  # type: ignore[misc]
        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            # The first call the client makes (from its constructor): from here on, calls carry the trace.
            trace_headers.stamp_openapi_client(self._healthz_api.api_client.rest_client)
            return self._healthz_api.healthz_service_get_healthz(_request_timeout=timeout)

        def _load_config(self, *args: Any, **kwargs: Any) -> Any:
            # urllib3 would retry a timed-out GET three times, so one call to a hung server took four
            # timeouts in its worker thread, long after the caller gave up; retries are the runtime's.
            import urllib3

            config = super()._load_config(*args, **kwargs)
            config.retries = urllib3.Retry(connect=0, read=0, other=0, status=0)
            return config

    credentials = ServiceAccountTokenVolumeCredentials(str(token_path)) if token_path else None
    client = TimedClient(host=host, namespace=namespace or "kubeflow", credentials=credentials)
    rest = client._run_api.api_client.rest_client
    unbounded = rest.request

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return unbounded(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = request
    return client


def _timed_out(error: Exception) -> bool:
    from urllib3.exceptions import MaxRetryError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    reason = error.reason if isinstance(error, MaxRetryError) else error
    return isinstance(reason, Urllib3Timeout)


def _translated(host: str, what: str, error: Exception) -> MlcdError:
    status = getattr(error, "status", None)
    detail = getattr(error, "body", None) or str(error)
    if status == 404:
        return NotFound(f"KFP at {host}: cannot {what}: not found ({detail})")
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return PermanentError(f"KFP at {host} refused to {what}: HTTP {status} {detail}")
    headers = getattr(error, "headers", None) or {}
    return AdapterUnavailable(
        f"KFP at {host} failed to {what}: {type(error).__name__}: {detail}",
        retry_after_s=retry_after.seconds(headers.get("Retry-After")) if status in (429, 503) else None,
    )


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


def _pipeline_ref(pipeline: str, version: Any) -> PipelineRef:
    package_url = getattr(version.package_url, "pipeline_url", "") if version.package_url else ""
    return PipelineRef(
        pipeline=pipeline,
        version=str(version.display_name or version.name or version.pipeline_version_id),
        pipeline_id=str(version.pipeline_id or ""),
        version_id=str(version.pipeline_version_id or ""),
        package_uri=package_url or "",
    )


def _run(run: Any) -> Run:
    state = str(run.state or "PENDING")
    failing = _failed_tasks(run)
    error_message = run.error.message if run.error is not None and run.error.message else ""
    return Run(
        run_id=str(run.run_id),
        name=str(run.display_name or ""),
        state="PENDING" if state == "RUNTIME_STATE_UNSPECIFIED" else state,
        failed_task=failing[0][0] if failing else "",
        log_tail=(failing[0][1] if failing and failing[0][1] else error_message)[-worker.LOG_TAIL_CHARS :],
    )


def _failed_tasks(run: Any) -> list[tuple[str, str]]:
    """(task name, error) of each failed executor task; DAG tasks (with children) come last."""
    details = run.run_details.task_details if run.run_details is not None else None
    failed = [task for task in details or [] if str(task.state) == "FAILED"]
    failed.sort(key=lambda task: bool(task.child_tasks))
    return [
        (str(task.display_name or task.task_id), task.error.message if task.error else "") for task in failed
    ]


# --- embedded: kfp.local in a worker process ------------------------------------------------------


class LocalOrchestrator:
    """Compiled packages and runs in folders under MLCD_HOME; each run in its own worker process."""

    ORPHAN_AFTER = timedelta(minutes=2)  # a PENDING run whose worker never reported is given up after this

    def __init__(
        self,
        home: Path,
        pipelines_dir: Path = Path("pipelines"),
        compile_timeout_s: float = 120.0,
        credentials: Mapping[str, str] | None = None,
    ):
        self.packages = home.resolve() / "pipelines"
        self.runs = home.resolve() / "runs"
        self.pipelines_dir = pipelines_dir
        self.compile_timeout_s = compile_timeout_s
        self._credentials = dict(credentials or {})  # into each worker's environment, never a state file
        self._workers: dict[str, subprocess.Popen[bytes]] = {}

    async def publish(self, pipeline: str, version: str, package: Path) -> PipelineRef:
        target = self._package_path(pipeline, version)
        if not target.exists():
            await asyncio.to_thread(_copy_atomically, package, target)
        return _local_ref(pipeline, target)

    async def latest(self, pipeline: str) -> PipelineRef | None:
        """The newest published version; when none was published, the working tree's pipeline, compiled."""
        newest = newest_package(self.packages / _safe(pipeline, "pipeline"))
        if newest is not None:
            return _local_ref(pipeline, newest)
        folder = self.pipelines_dir / pipeline
        if not (folder / "pipeline.py").is_file():
            return None
        return _local_ref(pipeline, await self._compile_working_tree(pipeline, folder))

    async def find_run(self, name: str) -> Run | None:
        path = self._state_path(name)
        return await asyncio.to_thread(self._read_run, path) if path.exists() else None

    async def submit(self, name: str, pipeline: PipelineRef, parameters: dict[str, Any]) -> Run:
        existing = await self.find_run(name)
        if existing is not None:
            return existing
        package = Path(pipeline.package_uri)
        if not await asyncio.to_thread(package.is_file):
            raise PermanentError(
                f"pipeline package {package} of {pipeline.pipeline} {pipeline.version} is missing"
            )
        path = self._state_path(name)
        state = {
            "run_id": name,
            "name": name,
            "state": "PENDING",
            "pipeline": pipeline.pipeline,
            "version": pipeline.version,
            "package": str(package),
            "parameters": parameters,
            "log": str(path.with_suffix(".log")),
            "created_at": worker.now(),
        }
        await asyncio.to_thread(self._start_worker, path, state)
        log.info("local run started", run=name, pipeline=pipeline.pipeline, version=pipeline.version)
        return Run(run_id=name, name=name, state="PENDING")

    async def get_run(self, run_id: str) -> Run:
        path = self._state_path(run_id)
        if not path.exists():
            raise NotFound(f"no local run {run_id!r} under {self.runs}")
        return await asyncio.to_thread(self._read_run, path)

    async def ping(self) -> None:
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
            self.packages.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdapterUnavailable(
                f"cannot write the local runner's folders under {self.runs.parent}: {e}"
            ) from e

    async def terminate_run(self, run_id: str) -> None:
        """Stop a run's worker and its tasks (started by this process or an earlier one); it ends CANCELED."""
        path = self._state_path(run_id)
        if not path.exists():
            raise NotFound(f"no local run {run_id!r} under {self.runs}")
        state = await asyncio.to_thread(worker.read_state, path)
        if state["state"] in _FINAL:
            return
        process = self._workers.pop(run_id, None)
        if process is not None:
            await asyncio.to_thread(_stop_group, process)
        elif state.get("pid") is not None:
            await asyncio.to_thread(_stop_pid_group, int(state["pid"]))
        await asyncio.to_thread(self._mark_canceled, path, "terminated by mlcd")

    async def close(self) -> None:
        """Stop the workers this process started that are still running; their runs end CANCELED."""
        for name, process in list(self._workers.items()):
            if process.poll() is None:
                await asyncio.to_thread(_stop_group, process)
                await asyncio.to_thread(self._mark_canceled, self._state_path(name))
            self._workers.pop(name, None)

    # -- plumbing --

    def _package_path(self, pipeline: str, version: str) -> Path:
        return self.packages / _safe(pipeline, "pipeline") / f"{_safe(version, 'version')}.yaml"

    def _state_path(self, name: str) -> Path:
        return self.runs / f"{_safe(name, 'run name')}.json"

    def _start_worker(self, path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        worker.write_state(path, state)
        with open(state["log"], "ab") as log_file:
            self._workers[state["name"]] = subprocess.Popen(
                [sys.executable, "-m", "mlcd.adapters.kfp_local_worker", "run", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._credentials},
                start_new_session=True,  # its task subprocesses form one group that `close` can stop
            )

    def _read_run(self, path: Path) -> Run:
        state = worker.read_state(path)
        name = state["name"]
        process = self._workers.get(name)
        if process is not None and state["state"] in _FINAL:
            # The worker reported its last word and is exiting: reap it, never leave it a zombie.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(REAP_TIMEOUT_S)
        if process is not None and process.poll() is not None:
            self._workers.pop(name, None)  # reaped; the state file now holds its last word
            state = worker.read_state(path)
        if state["state"] not in _FINAL and not self._worker_alive(state, process):
            state.update(
                state="FAILED",
                error="the local runner's worker process ended without reporting a result",
                finished_at=worker.now(),
                log_tail=worker.log_tail(Path(state["log"])),
            )
            worker.write_state(path, state)
        return run_from_state(state)

    def _worker_alive(self, state: dict[str, Any], process: subprocess.Popen[bytes] | None) -> bool:
        if process is not None:
            return process.poll() is None
        pid = state.get("pid")
        if pid is None:  # PENDING, started by an earlier mlcd process: give the worker a moment to report
            created = datetime.fromisoformat(state["created_at"])
            return datetime.now(UTC) - created < self.ORPHAN_AFTER
        return _pid_alive(int(pid))

    def _mark_canceled(self, path: Path, why: str = "stopped when mlcd shut down") -> None:
        state = worker.read_state(path)
        if state["state"] not in _FINAL:
            state.update(state="CANCELED", error=why, finished_at=worker.now())
            worker.write_state(path, state)

    async def _compile_working_tree(self, pipeline: str, folder: Path) -> Path:
        target = self._package_path(pipeline, working_tree_version(folder))
        if target.exists():
            return target
        partial = target.with_name(f".partial-{target.name}")  # the compiler insists on a .yaml suffix
        try:
            await kfp_compiler.compile_in_child(folder, partial, self.compile_timeout_s)
        except kfp_compiler.CompileTimedOut as e:
            raise AdapterUnavailable(str(e)) from e
        except kfp_compiler.CompileError as e:
            raise PermanentError(f"{folder} does not compile: {e}") from e
        partial.replace(target)
        log.info("compiled the working tree's pipeline", pipeline=pipeline, package=str(target))
        return target


def run_from_state(state: dict[str, Any]) -> Run:
    """The port's view of a local run's state file."""
    outputs = dict(state.get("outputs") or {})
    return Run(
        run_id=str(state["run_id"]),
        name=str(state["name"]),
        state=str(state["state"]),
        outputs=outputs,
        failed_task=str(state.get("failed_task") or ""),
        log_tail=str(state.get("log_tail") or state.get("error") or ""),
    )


def newest_package(folder: Path) -> Path | None:
    """The most recently published compiled package in a pipeline's folder."""
    packages = [p for p in folder.glob("*.yaml") if not p.name.startswith(".")] if folder.is_dir() else []
    return max(packages, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def working_tree_version(folder: Path) -> str:
    """A version name for the working tree's pipeline: changes whenever one of its Python files does."""
    digest = hashlib.sha256()
    for source in sorted(folder.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return f"tree-{digest.hexdigest()[:12]}"


def _local_ref(pipeline: str, package: Path) -> PipelineRef:
    return PipelineRef(
        pipeline=pipeline,
        version=package.stem,
        pipeline_id=pipeline,
        version_id=package.stem,
        package_uri=str(package),
    )


def _safe(name: str, what: str) -> str:
    if not _SAFE_NAME.match(name):
        raise PermanentError(f"{what} {name!r} cannot name a file: use letters, digits, '.', '_' and '-'")
    return name


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.replace(target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def _stop_pid_group(pid: int, timeout_s: float = 10) -> None:
    """Stop the process group a worker started by an earlier mlcd process leads (it is not our child)."""
    import time

    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def s3_credentials(settings: Settings) -> dict[str, str]:
    """MLCD_S3_ACCESS_KEY/SECRET_KEY under the names the pipeline's tasks read from their environment."""
    named = {"AWS_ACCESS_KEY_ID": settings.s3_access_key, "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key}
    return {name: secret.get_secret_value() for name, secret in named.items() if secret is not None}


def build(settings: Settings) -> Orchestrator:
    """Kubeflow Pipelines when MLCD_KFP_HOST is set, else the kfp local runner under MLCD_HOME.

    On a cluster the pipeline's pods take S3 credentials from a Kubernetes Secret; the local runner's
    workers get them from the settings, in their environment.
    """
    if settings.kfp_host:
        return KfpClientOrchestrator(
            settings.kfp_host,
            settings.kfp_timeout_s,
            namespace=settings.kfp_namespace,
            experiment=settings.kfp_experiment,
            token_path=settings.kfp_token_path,
        )
    return LocalOrchestrator(
        settings.home, settings.pipelines_dir, settings.build_timeout_s, credentials=s3_credentials(settings)
    )
