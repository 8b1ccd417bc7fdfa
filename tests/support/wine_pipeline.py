"""The wine-quality seed's `components.py`, loaded for its pins without leaving a `components` module behind
(the compiler tests check that compiling a pipeline leaves no trace in sys.modules)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.conftest import REPO

COMPONENTS = REPO / "pipelines" / "wine_quality" / "components.py"


def components() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wine_quality_components", COMPONENTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
