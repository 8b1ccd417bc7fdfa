"""Compile a pipeline folder (its `pipeline.py`) into a KFP IR YAML package: the one compiler of mlcd.

`compile_pipeline` runs in the caller's process and leaves `sys.path` and `sys.modules` as it found
them (`mlcd pipelines compile`). The builder and the embedded orchestrator run it in a child process
(`compile_in_child`, i.e. `python -m mlcd.adapters.kfp_compiler FOLDER OUT.yaml`) so user code can neither
hang nor pollute the service. A failure is one line a person can act on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from mlcd.errors import MlcdError

ENTRY = "pipeline.py"
ERROR_PREFIX = "mlcd-compile-error: "


class CompileError(MlcdError):
    """The pipeline folder does not compile; the message says where and why."""


class CompileTimedOut(CompileError):
    """Compiling took longer than allowed (user code that hangs, or a machine too busy)."""


def compile_pipeline(folder: Path, out_yaml: Path) -> str:
    """Compile FOLDER/pipeline.py's pipeline into `out_yaml`; returns the pipeline function's name.

    The pipeline is the module's `pipeline` attribute when that is a `@dsl.pipeline`, else the only
    `@dsl.pipeline` the module defines. The folder and its parent are importable while it loads, so
    `import components` and `from <folder> import components` both work.
    """
    folder = folder.resolve()
    source = folder / ENTRY
    if not source.is_file():
        raise CompileError(f"{folder}: no {ENTRY} in this folder")
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    sys.path[:0] = [str(folder), str(folder.parent)]
    try:
        module = _load(source)
        name, pipeline = _find_pipeline(module, source)
        _compile(pipeline, out_yaml, source)
    finally:
        sys.path[:] = saved_path
        for added in set(sys.modules) - saved_modules:
            if _defined_under(sys.modules[added], folder):
                del sys.modules[added]
    return name


def _load(source: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_mlcd_pipeline_{abs(hash(source))}", source)
    if spec is None or spec.loader is None:
        raise CompileError(f"{source}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise CompileError(f"{e.filename or source}:{e.lineno}: SyntaxError: {e.msg}") from e
    except Exception as e:
        raise CompileError(f"{_where(e, source.parent)}{type(e).__name__}: {e}") from e
    return module


def _find_pipeline(module: ModuleType, source: Path) -> tuple[str, Any]:
    from kfp.dsl.graph_component import GraphComponent

    named = getattr(module, "pipeline", None)
    if isinstance(named, GraphComponent):
        return "pipeline", named
    found = {name: value for name, value in vars(module).items() if isinstance(value, GraphComponent)}
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise CompileError(f"{source}: defines no @dsl.pipeline function")
    raise CompileError(
        f"{source}: defines several pipelines ({', '.join(sorted(found))}); name the one to build `pipeline`"
    )


def _compile(pipeline: Any, out_yaml: Path, source: Path) -> None:
    from kfp import compiler

    try:
        out_yaml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompileError(f"cannot write {out_yaml}: {e.strerror or e}") from e
    try:
        compiler.Compiler().compile(pipeline, str(out_yaml))
    except Exception as e:
        raise CompileError(f"{source}: {type(e).__name__}: {e}") from e


def _where(error: BaseException, folder: Path) -> str:
    """`file:line: ` of the deepest frame inside the pipeline folder, if any."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).is_relative_to(folder)]
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


def _defined_under(module: ModuleType, folder: Path) -> bool:
    """Whether the module came from the pipeline folder (a namespace package over it counts too)."""
    location = getattr(module, "__file__", None)
    if location is not None:
        return Path(location).resolve().is_relative_to(folder)
    return any(Path(entry).resolve() == folder for entry in getattr(module, "__path__", ()))


async def compile_in_child(folder: Path, out_yaml: Path, timeout_s: float) -> None:
    """`compile_pipeline` in a child process, killed after `timeout_s`; CompileError on any failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlcd.adapters.kfp_compiler",
        str(folder),
        str(out_yaml),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as e:
        raise CompileTimedOut(f"{folder}: compiling took longer than {timeout_s:g}s") from e
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    if process.returncode != 0:
        raise CompileError(_child_error(stderr.decode(errors="replace"), process.returncode))


def _child_error(stderr: str, returncode: int | None) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    reported = [line.removeprefix(ERROR_PREFIX) for line in lines if line.startswith(ERROR_PREFIX)]
    if reported:
        return reported[-1]
    return f"the compiler exited with {returncode}: {lines[-1] if lines else 'no output'}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m mlcd.adapters.kfp_compiler FOLDER OUT.yaml", file=sys.stderr)
        return 2
    try:
        compile_pipeline(Path(argv[1]), Path(argv[2]))
    except CompileError as e:
        print(ERROR_PREFIX + " ".join(str(e).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
