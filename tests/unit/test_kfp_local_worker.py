"""The embedded runner's pure parts: failure parsing, state files, package choice, working-tree versions."""

from __future__ import annotations

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
