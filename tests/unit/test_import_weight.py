"""`mlcd --help` and the ingest path start fast: importing the CLI loads none of the heavy SDKs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("kfp", "mlflow", "great_expectations")


def test_importing_the_cli_loads_no_heavy_sdk() -> None:
    program = f"import sys, mlcd.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"import mlcd.cli loaded {loaded.stdout.strip()}"


def test_the_heavy_sdk_contract_covers_every_module_but_the_adapters() -> None:
    """import-linter keeps kfp, mlflow and great_expectations in the adapters only if it looks at every
    other module: a new top-level module left out of the contract could import them unseen."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [contract] = [
        c for c in contracts if c["type"] == "forbidden" and set(c["forbidden_modules"]) == set(HEAVY)
    ]
    package = root / "services" / "mlcd"
    modules = {
        f"mlcd.{p.stem}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert modules - set(contract["source_modules"]) == {"mlcd.adapters"}
