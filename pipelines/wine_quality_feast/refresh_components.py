"""Write the CSV pipeline's train and register components as component YAML files beside this one.

The builder fetches only a pipeline's own folder, so this variant carries the two components it shares
with pipelines/wine_quality as compiled component specs (KFP's way of sharing a component between
pipelines). Run `python pipelines/wine_quality_feast/refresh_components.py` after changing them there;
tests/integration/test_feast_pipeline.py fails while the copies differ.
"""

import importlib.util
import sys
from pathlib import Path

from kfp import compiler

HERE = Path(__file__).resolve().parent
SHARED = ("train_model", "register_model")


def render(target: Path) -> list[Path]:
    """Compile the shared components into `target`; the files written."""
    source = HERE.parent / "wine_quality" / "components.py"
    spec = importlib.util.spec_from_file_location("wine_quality_components", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = []
    for name in SHARED:
        path = target / f"{name}.yaml"
        compiler.Compiler().compile(getattr(module, name), str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in render(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
