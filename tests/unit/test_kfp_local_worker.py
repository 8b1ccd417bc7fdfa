"""The embedded runner's pure parts: failure parsing, state files, package choice, working-tree versions,
the packages tasks declare and whether this environment holds them."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from mlcd.adapters import kfp_local_worker as worker
from mlcd.adapters.kfp import newest_package, run_from_state, working_tree_version


def test_the_failed_task_is_read_from_kfp_locals_coloured_message() -> None:
    message = (
        "Pipeline \x1b[95m'wine-quality'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. "
        "Inner task failed: \x1b[96m'train-model'\x1b[0m."
    )
    assert worker.failed_task(message) == "train-model"
    assert worker.failed_task("something else broke") == ""


def test_log_tail_keeps_the_last_lines_without_colour(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("\n".join(f"\x1b[91mline {n}\x1b[0m" for n in range(100)))
    tail = worker.log_tail(log)
    assert tail.splitlines()[-1] == "line 99"
    assert len(tail.splitlines()) == worker.LOG_TAIL_LINES
    assert worker.log_tail(tmp_path / "missing.log") == ""


def test_a_state_file_round_trips_into_a_run(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    state = {"run_id": "r", "name": "r", "state": "SUCCEEDED", "outputs": {"model_version": "2"}}
    worker.write_state(path, state)

    run = run_from_state(worker.read_state(path))

    assert run.finished and run.outputs == {"model_version": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_newest_published_package_wins(tmp_path: Path) -> None:
    assert newest_package(tmp_path / "absent") is None
    old, new = tmp_path / "aaa.yaml", tmp_path / "bbb.yaml"
    for i, path in enumerate((new, old)):
        path.write_text("x")
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    (tmp_path / ".partial-ccc.yaml").write_text("x")
    assert newest_package(tmp_path) == old


def test_the_working_tree_version_follows_the_sources(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text("a = 1\n")
    first = working_tree_version(tmp_path)
    assert first == working_tree_version(tmp_path) and first.startswith("tree-")
    (tmp_path / "components.py").write_text("b = 2\n")
    assert working_tree_version(tmp_path) != first


def _install_line(*packages: str, options: str = "") -> str:
    """The shell script KFP 2.16 puts before a lightweight component's executor."""
    quoted = " ".join(f"'{p}'" for p in packages)
    return (
        '\nif ! [ -x "$(command -v pip)" ]; then\n    python3 -m ensurepip || python3 -m ensurepip --user'
        " || apt-get install python3-pip\nfi\n\nPIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install"
        f" --quiet --no-warn-script-location {options}{quoted}  &&  python3 -m pip install --quiet"
        " --no-warn-script-location 'kfp==2.16.1' '--no-deps'"
        ' \'typing-extensions>=3.7.4,<5; python_version<"3.9"\' && "$0" "$@"\n'
    )


def test_the_packages_each_task_declares_are_read_from_the_compiled_package(tmp_path: Path) -> None:
    feast = _install_line("feast==0.67.0", "pandas==2.3.3")
    mirrored = _install_line("pandas==3.1.1", options="--index-url https://mirror.example/simple ")
    executors = {
        name: {"container": {"command": ["sh", "-c", script, "sh", "--executor_input"]}}
        for name, script in (("exec-load", feast), ("exec-train", mirrored))
    }
    package = tmp_path / "pipeline.yaml"
    package.write_text(f"deploymentSpec:\n  executors: {json.dumps(executors)}\n---\nplatforms: {{}}\n")

    declared = worker.declared_packages(package)

    assert declared == [
        "feast==0.67.0",
        "pandas==2.3.3",
        "kfp==2.16.1",
        'typing-extensions>=3.7.4,<5; python_version<"3.9"',
        "pandas==3.1.1",
    ]


def test_only_requirements_this_environment_does_not_hold_are_unmet() -> None:
    pandas = importlib.metadata.version("pandas")
    held = [f"pandas=={pandas}", f"kfp>={importlib.metadata.version('kfp')}", 'nothing; python_version<"3"']
    foreign = ["pandas==2.3.3", "no-such-package-mlcd==1.0", "git+https://example.com/x.git"]

    assert worker.unmet(held) == []
    assert worker.unmet(held + foreign) == foreign
