"""The Tuner port's embedded default: the policy's search space run with Optuna, each trial a pipeline run.

Each experiment runs in its own worker process (`python -m mlcd.adapters.optuna_tuner run STATE.json`),
so the event loop never waits on a trial. The worker asks Optuna for `parallel_trials` assignments at a
time, runs each as `python -m mlcd.trainer.trial` (the very command a Katib trial's container runs: one
run of the model's pipeline on the configured orchestrator, which prints its metrics as `name=value`),
tells Optuna each trial's objective value, and stops at `max_trials` succeeded trials, at the objective's
goal, or after more than `max_failed_trials` failures. Katib uses Optuna for tpe, multivariate-tpe, cmaes,
random and grid, and scikit-optimize's GP optimizer for bayesianoptimization: so does this tuner
(`skopt_sampler`).

Studies live in MLCD_HOME/tuning/<model>.db (Optuna's SQLite storage), one study per experiment; the
experiment's state is MLCD_HOME/tuning/<name>.json, written atomically by the worker. With `warm_start`,
the best trials of the model's previous study are enqueued first (`Study.enqueue_trial`), so they are
tried again on the new data before the sampler explores (kubeflow/katib#1067 asks Katib for this).
Credentials reach trials through the worker's environment, never the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlcd import logs
from mlcd.adapters import kfp_local_worker as files
from mlcd.errors import AdapterUnavailable, PermanentError
from mlcd.policy.schema import SearchParameter, Tuning
from mlcd.ports import TuningRequest, TuningResult

log = logs.get(__name__)
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_METRIC_LINE = re.compile(
    r"^([\w|-]+)\s*=\s*([+-]?\d*(?:\.\d+)?(?:[Ee][+-]?\d+)?)\s*$"
)  # Katib's StdOut format
_FINAL = {"SUCCEEDED", "FAILED"}
ORPHAN_AFTER = timedelta(minutes=2)


def _safe(name: str) -> str:
    if not _SAFE.match(name):
        raise PermanentError(f"{name!r} cannot name a file: use letters, digits, '.', '_' and '-'")
    return name


class OptunaTuner:
    def __init__(
        self, home: Path, trial_env: Mapping[str, str], credentials: Mapping[str, str] | None = None
    ):
        """`trial_env`: the settings each trial's orchestrator and registry take (MLCD_HOME, MLCD_KFP_HOST,
        ...); `credentials`: S3 keys for the trials' environment, never written down."""
        self.folder = home.resolve() / "tuning"
        self.trial_env = dict(trial_env)
        self._credentials = dict(credentials or {})
        self._workers: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self, request: TuningRequest) -> TuningResult:
        path = self._state_path(request.name)
        if path.exists():
            return await asyncio.to_thread(self._read, path)
        state = {
            "name": request.name,
            "model": request.model,
            "state": "RUNNING",
            "storage": str(self.folder / f"{_safe(request.model)}.db"),
            "pipeline": asdict(request.pipeline),
            "parameters": request.parameters,
            "tuning": request.tuning.model_dump(mode="json", exclude={"timeout"}),
            "trial_env": self.trial_env,
            "trials": [],
            "log": str(path.with_suffix(".log")),
            "created_at": files.now(),
        }
        await asyncio.to_thread(self._start_worker, path, state)
        log.info("tuning experiment started", experiment=request.name, model=request.model)
        return TuningResult(request.name, "RUNNING")

    async def result(self, name: str) -> TuningResult | None:
        path = self._state_path(name)
        return await asyncio.to_thread(self._read, path) if path.exists() else None

    async def cancel(self, name: str) -> None:
        path = self._state_path(name)
        if not path.exists():
            return
        process = self._workers.pop(name, None)
        state = await asyncio.to_thread(files.read_state, path)
        if process is not None:
            await asyncio.to_thread(_stop_group, process.pid, process)
        elif state.get("pid") and state["state"] not in _FINAL:
            await asyncio.to_thread(_stop_group, int(state["pid"]), None)
        await asyncio.to_thread(self._mark, path, "FAILED", "cancelled by mlcd")

    async def ping(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdapterUnavailable(f"cannot write the tuning folder {self.folder}: {e}") from e

    async def close(self) -> None:
        """Stop the experiments this process started that still run; they end FAILED."""
        for name, process in list(self._workers.items()):
            if process.poll() is None:
                await asyncio.to_thread(_stop_group, process.pid, process)
                await asyncio.to_thread(
                    self._mark, self._state_path(name), "FAILED", "stopped when mlcd shut down"
                )
            self._workers.pop(name, None)

    # -- plumbing --

    def _state_path(self, name: str) -> Path:
        return self.folder / f"{_safe(name)}.json"

    def _start_worker(self, path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_state(path, state)
        with open(state["log"], "ab") as log_file:
            self._workers[state["name"]] = subprocess.Popen(
                [sys.executable, "-m", "mlcd.adapters.optuna_tuner", "run", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._credentials},
                start_new_session=True,  # its trials share its process group, which `cancel` stops
            )

    def _read(self, path: Path) -> TuningResult:
        state = files.read_state(path)
        process = self._workers.get(state["name"])
        if process is not None and process.poll() is not None:
            self._workers.pop(state["name"], None)
            state = files.read_state(path)
        if state["state"] not in _FINAL and not _alive(state, process):
            state.update(state="FAILED", message="the tuning worker ended without reporting a result")
            files.write_state(path, state)
        return result_of(state)

    def _mark(self, path: Path, final: str, why: str) -> None:
        state = files.read_state(path)
        if state["state"] not in _FINAL:
            state.update(state=final, message=why, finished_at=files.now())
            files.write_state(path, state)


def result_of(state: dict[str, Any]) -> TuningResult:
    return TuningResult(
        name=state["name"],
        state=state["state"],
        best_trial=state.get("best_trial", ""),
        parameters=dict(state.get("best_parameters") or {}),
        objective_value=state.get("best_value"),
        trials=len(state.get("trials") or []),
        message=state.get("message", ""),
    )


def _alive(state: dict[str, Any], process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        return process.poll() is None
    pid = state.get("pid")
    if pid is None:
        created = datetime.fromisoformat(state["created_at"])
        return datetime.now(UTC) - created < ORPHAN_AFTER
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, process: subprocess.Popen[bytes] | None, timeout_s: float = 30) -> None:
    """SIGTERM to the worker's group (each trial then stops its own run), SIGKILL if it lingers."""
    import time

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait(5)


# --- the worker process ---------------------------------------------------------------------------


def distribution(parameter: SearchParameter) -> Any:
    import optuna.distributions as d

    if parameter.type == "int":
        return d.IntDistribution(
            int(parameter.min or 0), int(parameter.max or 0), step=int(parameter.step or 1)
        )
    if parameter.type == "double":
        return d.FloatDistribution(float(parameter.min or 0), float(parameter.max or 0), step=parameter.step)
    return d.CategoricalDistribution(list(parameter.values or []))


def grid(parameter: SearchParameter) -> list[Any]:
    if parameter.values is not None:
        return list(parameter.values)
    low, high, step = float(parameter.min or 0), float(parameter.max or 0), float(parameter.step or 1)
    points = [low + i * step for i in range(int((high - low) / step + 1e-9) + 1)]
    return [int(p) for p in points] if parameter.type == "int" else points


def grid_size(tuning: Tuning) -> int:
    return math.prod(len(grid(p)) for p in tuning.parameters)


def _grid_sampler_class() -> Any:
    import optuna.samplers

    class AskAndTellGrid(optuna.samplers.GridSampler):  # type: ignore[misc]
        """Optuna's GridSampler stops the study once the grid is done, which only `optimize` allows; here
        the worker counts trials itself and never asks past the grid."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    return AskAndTellGrid


def _ask_and_tell_grid(search_space: dict[str, list[Any]], seed: int) -> Any:
    return _grid_sampler_class()(search_space, seed=seed)


def sampler(tuning: Tuning, seed: int) -> Any:
    import optuna.samplers as s

    if tuning.algorithm == "random":
        return s.RandomSampler(seed=seed)
    if tuning.algorithm == "grid":
        return _ask_and_tell_grid({p.name: grid(p) for p in tuning.parameters}, seed=seed)
    if tuning.algorithm == "cmaes":
        return s.CmaEsSampler(seed=seed)
    if tuning.algorithm == "bayesianoptimization":
        from mlcd.adapters.skopt_sampler import SkoptSampler

        return SkoptSampler(seed=seed)
    return s.TPESampler(seed=seed, multivariate=tuning.algorithm == "multivariate-tpe")


def metrics_of(output: str) -> dict[str, float]:
    """`name=value` lines, as Katib's StdOut collector reads them."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if match and match.group(2) not in ("", "+", "-"):
            found[match.group(1)] = float(match.group(2))
    return found


def _warm_start(study: Any, storage: Any, tuning: Tuning) -> str:
    """Enqueue the best trials of the model's newest other study; returns its name ('' when none)."""
    import optuna

    others = [s for s in optuna.get_all_study_summaries(storage) if s.study_name != study.study_name]
    others = [s for s in others if s.datetime_start is not None and s.n_trials > 0]
    if not others:
        return ""
    previous = optuna.load_study(
        study_name=max(others, key=lambda s: s.datetime_start or datetime.min).study_name, storage=storage
    )
    space = {p.name: distribution(p) for p in tuning.parameters}
    done = [t for t in previous.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    done.sort(key=lambda t: float(t.value or 0.0), reverse=tuning.objective.type == "maximize")
    for trial in done[: tuning.parallel_trials]:
        params = {
            k: v
            for k, v in trial.params.items()
            if k in space and space[k]._contains(space[k].to_internal_repr(v))
        }
        if set(params) == set(space):
            study.enqueue_trial(params, skip_if_exists=True)
    return str(previous.study_name)


def run(state_path: Path) -> int:
    state = files.read_state(state_path)
    state.update(pid=os.getpid(), started_at=files.now())
    files.write_state(state_path, state)
    running: list[tuple[Any, str, subprocess.Popen[str]]] = []

    def stop(signum: int, _frame: Any) -> None:
        for _, _, process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for _, _, process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        _search(state, state_path, running)
    except Exception as e:  # every way a search can fail ends in a FAILED state file
        state.update(state="FAILED", message=f"{type(e).__name__}: {e}")
        print(state["message"])
    state["finished_at"] = files.now()
    files.write_state(state_path, state)
    return 0 if state["state"] == "SUCCEEDED" else 1


def _search(
    state: dict[str, Any], state_path: Path, running: list[tuple[Any, str, subprocess.Popen[str]]]
) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning = Tuning.model_validate(state["tuning"])
    name = state["name"]
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    storage = optuna.storages.RDBStorage(f"sqlite:///{state['storage']}")
    maximize = tuning.objective.type == "maximize"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize" if maximize else "minimize",
        sampler=sampler(tuning, seed),
        load_if_exists=True,
    )
    if tuning.warm_start and not study.trials:
        state["warm_start_from"] = _warm_start(study, storage, tuning)
    space = {p.name: distribution(p) for p in tuning.parameters}
    metrics = [tuning.objective.metric, *tuning.objective.additional_metrics]
    succeeded = failed = 0
    budget = min(tuning.max_trials, grid_size(tuning)) if tuning.algorithm == "grid" else tuning.max_trials
    while succeeded < budget and failed <= tuning.max_failed_trials:
        batch = [study.ask(space) for _ in range(min(tuning.parallel_trials, budget - succeeded))]
        running.clear()
        for trial in batch:
            trial_name = f"{name}-{trial.number:03d}"
            running.append((trial, trial_name, _start_trial(state, trial_name, trial.params, metrics)))
        for trial, trial_name, process in running:
            output, _ = process.communicate()
            observed = metrics_of(output)
            record = {"name": trial_name, "parameters": trial.params, "metrics": observed}
            if process.returncode == 0 and tuning.objective.metric in observed:
                study.tell(trial, observed[tuning.objective.metric])
                succeeded += 1
                record["state"] = "SUCCEEDED"
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failed += 1
                record.update(state="FAILED", output=output[-2000:])
            state["trials"].append(record)
        running.clear()
        best = _best(state["trials"], tuning.objective.metric, maximize)
        if best is not None:
            state.update(
                best_trial=best["name"],
                best_parameters=best["parameters"],
                best_value=best["metrics"][tuning.objective.metric],
            )
        files.write_state(state_path, state)
        goal = tuning.objective.goal
        if (
            best is not None
            and goal is not None
            and (state["best_value"] >= goal if maximize else state["best_value"] <= goal)
        ):
            break
    if failed > tuning.max_failed_trials:
        state.update(
            state="FAILED", message=f"{failed} trials failed (max_failed_trials {tuning.max_failed_trials})"
        )
    elif "best_trial" not in state:
        state.update(state="FAILED", message="no trial succeeded")
    else:
        state.update(state="SUCCEEDED", message=f"{succeeded} trials succeeded, {failed} failed")


def _best(trials: list[dict[str, Any]], metric: str, maximize: bool) -> dict[str, Any] | None:
    done = [t for t in trials if t["state"] == "SUCCEEDED"]
    if not done:
        return None
    pick = max if maximize else min
    return pick(done, key=lambda t: float(t["metrics"][metric]))


def _start_trial(
    state: dict[str, Any], trial_name: str, params: dict[str, Any], metrics: list[str]
) -> subprocess.Popen[str]:
    types = {p["name"]: p["type"] for p in state["tuning"]["parameters"]}
    command = [
        sys.executable,
        "-m",
        "mlcd.trainer.trial",
        "--run-name",
        trial_name,
        "--pipeline-ref",
        json.dumps(state["pipeline"]),
        "--parameters",
        json.dumps(state["parameters"]),
    ]
    for metric in metrics:
        command += ["--metric", metric]
    for key, value in params.items():
        command += ["--set", f"{key}:{types[key]}={value}"]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=None,  # into the worker's log
        text=True,
        env={**os.environ, **state["trial_env"]},
    )


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "run":
        return run(Path(argv[2]))
    print("usage: python -m mlcd.adapters.optuna_tuner run STATE.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
