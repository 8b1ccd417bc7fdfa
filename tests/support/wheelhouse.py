"""A folder of wheels for pipeline tasks that each run in a fresh virtualenv (kfp.local, `use_venv=True`).

pip on these machines keeps no HTTP cache, so every task would download its packages again: the tasks'
declared packages and their dependencies are downloaded once (kept between runs under ~/.cache/mlcd, keyed
by the pins), and the tasks install from it alone (`task_environment`), as pods would from an in-cluster
mirror.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

# What kfp.local installs in each fresh venv besides a task's own packages: it upgrades pip, setuptools and
# wheel first, and each task installs kfp itself without its dependencies (KFP's own install line).
RUNNER_PINS = [
    ["pip", "setuptools", "wheel"],
    ["--no-deps", f"kfp=={importlib.metadata.version('kfp')}", "typing-extensions"],
]


def wheelhouse(task_pins: list[list[str]]) -> Path:
    """A folder holding wheels for each group of pins (one task's `packages_to_install`) and the runner's."""
    groups = [*task_pins, *RUNNER_PINS]
    key = hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:12]
    folder = Path.home() / ".cache" / "mlcd" / f"pipeline-wheels-{key}"
    if not (folder / ".complete").exists():
        for group in groups:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "-d",
                    str(folder),
                    *group,
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
        (folder / ".complete").touch()
    return folder


def task_environment(folder: Path) -> dict[str, str]:
    """Only what a task's pod would have besides its own packages (PATH, pip's configuration on this
    machine), with pip installing from `folder` alone."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in {"PATH", "HOME", "LANG", "TMPDIR"} or name.startswith("PIP_")
    }
    return kept | {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder), "PIP_CONFIG_FILE": os.devnull}
