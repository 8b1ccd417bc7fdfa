"""The embedded orchestrator's worker process: runs one compiled pipeline on `kfp.local`.

`python -m mlcd.adapters.kfp_local_worker run STATE.json` runs the package the state file names with the
SubprocessRunner in this venv, outside mlcd's event loop, and writes the outcome back into the state file
(atomically), so a restarted mlcd reads it. Credentials reach the tasks through this process's
environment (inherited by each task subprocess), never through the state file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 4000


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


def run(state_path: Path) -> int:
    state = read_state(state_path)
    state.update(state="RUNNING", pid=os.getpid(), started_at=now())
    write_state(state_path, state)
    try:
        from kfp import components, local

        local.init(
            runner=local.SubprocessRunner(use_venv=False),
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
