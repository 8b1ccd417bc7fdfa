"""`mlcd --help` and the ingest path start fast: importing the CLI loads none of the heavy SDKs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("kfp", "mlflow", "great_expectations")


def test_importing_the_cli_loads_no_heavy_sdk() -> None:
    program = f"import sys, mlcd.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"import mlcd.cli loaded {loaded.stdout.strip()}"
