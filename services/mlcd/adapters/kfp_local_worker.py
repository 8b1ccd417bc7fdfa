"""The embedded orchestrator's worker process: runs one compiled pipeline on `kfp.local`.

`python -m mlcd.adapters.kfp_local_worker run STATE.json` runs the package the state file names with the
SubprocessRunner, outside mlcd's event loop, and writes the outcome back into the state file (atomically),
so a restarted mlcd reads it. Credentials reach the tasks through this process's environment (inherited by
each task subprocess), never through the state file.

Tasks run in this venv when every package each task declares (`packages_to_install`, and kfp itself)
already holds here, so their pip changes nothing. Otherwise (a task pins another pandas, say) each task
runs in a fresh virtualenv of its own (`use_venv=True`), installing what it declares with pip as this
process's environment configures it (PIP_INDEX_URL, PIP_FIND_LINKS, ...): slower, but mlcd's own
packages stay as they are.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 4000
_PIP_OPTIONS_WITH_VALUES = {"-i", "--index-url", "--extra-index-url", "--trusted-host", "-f", "--find-links"}


def read_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file in one rename, so a reader never sees half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
    partial.replace(path)


def now() -> str:
    return datetime.now(UTC).isoformat()


def plain(text: str) -> str:
    return _ANSI.sub("", text)


def failed_task(message: str) -> str:
    """The innermost failed task named in kfp.local's failure message, or ''."""
    match = _FAILED_TASK.search(plain(message))
    return match.group(1) if match else ""


def log_tail(log_path: Path) -> str:
    """The last lines of a run's log, colour codes removed: where a failing task's traceback ends up."""
    try:
        lines = [line for line in plain(log_path.read_text(errors="replace")).splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])[-LOG_TAIL_CHARS:]


def _jsonable(outputs: Any) -> dict[str, Any]:
    if not isinstance(outputs, dict):
        outputs = {"Output": outputs}
    return {
        name: value if isinstance(value, str | int | float | bool) or value is None else str(value)
        for name, value in outputs.items()
    }


def declared_packages(package: Path) -> list[str]:
    """Every requirement the package's tasks pip-install before they run (KFP's install lines)."""
    spec = next(yaml.safe_load_all(package.read_text()))
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    declared: list[str] = []
    for executor in executors.values():
        for part in executor.get("container", {}).get("command", []):
            for step in str(part).split("&&"):
                declared.extend(_pip_install_arguments(step))
    return list(dict.fromkeys(declared))


def _pip_install_arguments(step: str) -> list[str]:
    try:
        words = shlex.split(step)
    except ValueError:
        return []
    starts = [i + 1 for i in range(1, len(words)) if words[i - 1 : i + 1] == ["pip", "install"]]
    if not starts:
        return []
    arguments, skip = [], False
    for word in words[starts[0] :]:
        if skip or word.startswith("-"):
            skip = not skip and word in _PIP_OPTIONS_WITH_VALUES
            continue
        arguments.append(word)
    return arguments


def unmet(requirements: list[str]) -> list[str]:
    """The requirements this environment does not satisfy (an unreadable one counts as unmet)."""
    missing = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            missing.append(text)
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def run(state_path: Path) -> int:
    state = read_state(state_path)
    state.update(state="RUNNING", pid=os.getpid(), started_at=now())
    write_state(state_path, state)
    try:
        from kfp import components, local

        foreign = unmet(declared_packages(Path(state["package"])))
        state["task_environments"] = "a virtualenv per task" if foreign else "mlcd's own"
        write_state(state_path, state)
        if foreign:  # so the run's log says why it takes longer
            print(f"tasks run in a virtualenv each: this environment lacks {', '.join(foreign)}", flush=True)
        local.init(
            runner=local.SubprocessRunner(use_venv=bool(foreign)),
            pipeline_root=str(state_path.with_suffix("")),
            raise_on_error=True,
        )
        pipeline = components.load_component_from_file(state["package"])
        task = pipeline(**state["parameters"])
        state.update(state="SUCCEEDED", outputs=_jsonable(task.outputs))
    except Exception as e:  # every way a run can fail ends in a FAILED state file, never a lost run
        state.update(state="FAILED", error=plain(f"{type(e).__name__}: {e}"), failed_task=failed_task(str(e)))
        print(state["error"])  # so the log tail ends with why the run failed
    sys.stdout.flush()
    sys.stderr.flush()
    state.update(finished_at=now(), log_tail=log_tail(Path(state["log"])))
    write_state(state_path, state)
    return 0 if state["state"] == "SUCCEEDED" else 1


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "run":
        return run(Path(argv[2]))
    print("usage: python -m mlcd.adapters.kfp_local_worker run STATE.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
