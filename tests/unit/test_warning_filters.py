"""The suite's warning filters let library deprecations through but not what a finalizer reports: a leaked
socket (ResourceWarning) or a coroutine never awaited (RuntimeWarning) fails the test that caused it.

pytest reports those as PytestUnraisableExceptionWarning, a UserWarning, so a blanket ignore of library
UserWarnings silenced them: this runs a leaky test file under the repository's own pytest settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LEAKY = """
import gc
import socket


async def _never_awaited() -> None:
    pass


def test_leaks_a_socket() -> None:
    leaked = socket.socket()
    del leaked
    gc.collect()


def test_never_awaits_a_coroutine() -> None:
    _never_awaited()
    gc.collect()


def test_a_library_deprecation_passes() -> None:
    import warnings

    warnings.warn_explicit("old API", DeprecationWarning, "lib.py", 1, module="somelibrary")
"""


def test_a_leaked_socket_and_a_never_awaited_coroutine_fail_their_tests(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(REPO / "pyproject.toml"),
    ]
    argv += ["--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py"), "-rfE"]
    ran = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "FAILED test_leaky.py::test_leaks_a_socket" in ran.stdout, ran.stdout
    assert "FAILED test_leaky.py::test_never_awaits_a_coroutine" in ran.stdout, ran.stdout
    assert "2 failed, 1 passed" in ran.stdout, ran.stdout
