"""`mlcd pipelines compile` and the compiler behind the builder, on real and broken pipeline folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcd.adapters.kfp_compiler import CompileError, compile_in_child, compile_pipeline
from mlcd.commands.pipelines import app

REPO = Path(__file__).resolve().parents[2]
WINE = REPO / "pipelines/wine_quality"

TWO_PIPELINES = """
from kfp import dsl

@dsl.component
def hello(name: str) -> str:
    return "hello " + name

@dsl.pipeline(name="first")
def first(name: str = "a"):
    hello(name=name)

@dsl.pipeline(name="second")
def second(name: str = "b"):
    hello(name=name)
"""


def _folder(tmp_path: Path, source: str, extra: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "pipeline.py").write_text(source)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def test_cli_compiles_the_reference_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "wine.yaml"

    result = CliRunner().invoke(app, ["compile", str(WINE), "--output", str(out)])

    assert result.exit_code == 0, result.output
    assert "# Name: wine-quality" in out.read_text()


def test_cli_names_a_broken_pipeline_in_one_line_and_exits_2(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "from kfp import dsl\n\ndef broken(:\n")

    result = CliRunner().invoke(app, ["compile", str(folder), "-o", str(tmp_path / "x.yaml")])

    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "pipeline.py:3: SyntaxError" in result.output


def test_cli_refuses_a_folder_without_pipeline_py(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", str(tmp_path)])

    assert result.exit_code == 2
    assert "no pipeline.py" in result.output


def test_several_pipelines_need_one_named_pipeline(tmp_path: Path) -> None:
    folder = _folder(tmp_path, TWO_PIPELINES)
    with pytest.raises(CompileError, match="several pipelines"):
        compile_pipeline(folder, tmp_path / "x.yaml")

    (folder / "pipeline.py").write_text(TWO_PIPELINES + "\npipeline = second\n")

    assert compile_pipeline(folder, tmp_path / "x.yaml") == "pipeline"
    assert "# Name: second" in (tmp_path / "x.yaml").read_text()


def test_module_without_a_pipeline_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "import components\n", {"components.py": "x = 1\n"})

    with pytest.raises(CompileError, match=r"no @dsl\.pipeline"):
        compile_pipeline(folder, tmp_path / "x.yaml")


def test_compiling_leaves_no_trace_of_the_pipeline_modules(tmp_path: Path) -> None:
    compile_pipeline(WINE, tmp_path / "wine.yaml")

    assert "components" not in sys.modules
    assert str(WINE) not in sys.path


def test_error_inside_a_helper_module_names_its_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "import components\n", {"components.py": "x = 1\ny = 1 / 0\n"})

    with pytest.raises(CompileError, match=r"components\.py:2: ZeroDivisionError"):
        compile_pipeline(folder, tmp_path / "x.yaml")


async def test_child_compile_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "import time\ntime.sleep(60)\n")

    with pytest.raises(CompileError, match="took longer than 1s"):
        await compile_in_child(folder, tmp_path / "x.yaml", timeout_s=1)


async def test_child_compile_reports_the_compilers_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "raise RuntimeError('no data uri parameter')\n")

    with pytest.raises(CompileError, match=r"pipeline\.py:1: RuntimeError: no data uri parameter"):
        await compile_in_child(folder, tmp_path / "x.yaml", timeout_s=60)
