"""The wine-quality seed's `components.py`, loaded for its pins without leaving a `components` module behind
(the compiler tests check that compiling a pipeline leaves no trace in sys.modules)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO

COMPONENTS = REPO / "pipelines" / "wine_quality" / "components.py"


def components() -> ModuleType:
    return module(COMPONENTS, "wine_quality_components")


def module(path: Path, name: str = "") -> ModuleType:
    """The module at `path`, loaded without entering sys.modules."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
