"""The `mlcd` command under bad arguments: it succeeds, or it exits non-zero with typer's usage error or
one clear line; never a Python traceback.

Every command runs in-process through typer's CliRunner against a SQLite store in a temporary MLCD_HOME
and an API address where nothing listens. Commands that serve until stopped (`up`, `serve`, `demo`)
get only arguments they must refuse; `up` and `serve` run as real processes for that.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import strategies as st
from typer.testing import CliRunner

from mlcd import cli
from tests.support import processes
from tests.support.inputs_tried import explore

REPO = Path(__file__).resolve().parents[2]
MLCD = str(Path(sys.executable).parent / "mlcd")
PROBLEM_LINE = re.compile(r"^.+:\d+: \S.*$")

# What a shell can pass: any bytes but NUL, which Python hands over decoded with surrogateescape.
RAW_ARG = st.binary(min_size=1, max_size=16).filter(lambda raw: b"\x00" not in raw).map(os.fsdecode)
ODD_ARG = st.sampled_from(
    ["", " ", "-", "--", "-x", "--json", "--bogus", "0", "-1", "9" * 30, "1e999", "nan", "../../x", "a/b?c#d",
     "%2e%2e%2f", "é", "🦀", "\udcff", "\x01", "wine_quality", "mlcd.data.validated.v1", "open"]
)  # fmt: skip
TEXT = st.one_of(ODD_ARG, RAW_ARG, st.text(max_size=12))
NUMBER = st.one_of(st.integers().map(str), st.just(str(2**63)), st.just(str(-(2**63) - 1)), TEXT)
FLAG = st.just(None)


def _path_values(home: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        TEXT,
        st.sampled_from(
            [
                str(home),
                str(home / "absent.yaml"),
                str(home / "binary.yaml"),
                str(home / "no_pipeline"),
                str(home / "broken_pipeline"),
                str(REPO / "policies" / "wine_quality.yaml"),
                "/dev/null",
                "/dev/null/x.yaml",
                "/proc/self/mem",
            ]
        ),
    )


def _commands(home: Path) -> dict[tuple[str, ...], tuple[dict[str, st.SearchStrategy[Any]], list[Any]]]:
    """Each command that returns on its own: its options with values to try, and its positional arguments."""
    path = _path_values(home)
    return {
        ("gates", "list"): ({"--state": TEXT, "--model": TEXT, "--json": FLAG}, []),
        ("gates", "show"): ({"--json": FLAG}, [TEXT]),
        ("gates", "approve"): ({"--reason": TEXT}, [TEXT]),
        ("gates", "reject"): ({"--reason": TEXT}, [TEXT]),
        ("events", "list"): ({"--model": TEXT, "--type": TEXT, "--limit": NUMBER, "--json": FLAG}, []),
        ("dlq", "list"): ({"--all": FLAG, "--json": FLAG, "--limit": NUMBER}, []),
        ("dlq", "replay"): ({}, [st.lists(NUMBER, max_size=3)]),
        ("policy", "check"): ({}, [st.lists(path, min_size=1, max_size=3)]),
        ("pipelines", "compile"): ({"--output": path, "-o": path}, [path]),
        ("db", "upgrade"): ({}, []),
        ("db", "current"): ({}, []),
        ("rollback",): ({"--to-version": TEXT, "--reason": TEXT}, [TEXT]),
        ("retrain",): ({"--reason": TEXT, "--data": TEXT}, [TEXT]),
        ("explain",): ({"--expect": TEXT, "--offline": FLAG, "--json": FLAG}, [path]),
        ("lineage",): ({"--json": FLAG}, [TEXT, TEXT]),
        **{("rollout", action): ({}, [TEXT]) for action in ("promote", "abort", "pause", "resume", "retry")},
        ("events", "tail"): (
            {"--model": TEXT, "--type": TEXT, "--json": FLAG, "--count": NUMBER, "--timeout": NUMBER},
            [],
        ),
        ("status",): ({"--json": FLAG}, [st.none() | TEXT]),
    }


# Commands that do not return when their arguments are right get only arguments they must refuse.
REFUSED_IN_PROCESS = {
    ("demo",): [["x"], ["--bogus"], ["--", "-"]],
}
REFUSED_IN_A_PROCESS = {
    ("up",): [["--port", "0x"], ["--port", "-1"], ["--port", "70000"]],
    ("serve",): [[], ["\udcff"]],
}


@st.composite
def _invocation(draw: st.DrawFn, commands: dict[tuple[str, ...], Any]) -> list[str]:
    name = draw(st.sampled_from(sorted(commands)))
    options, positionals = commands[name]
    args = list(name)
    for option in draw(st.lists(st.sampled_from(sorted(options)), max_size=3)) if options else []:
        value = draw(options[option])
        args += [option] if value is None else [option, value]
    for positional in positionals:
        value = draw(positional)
        args += value if isinstance(value, list) else [] if value is None else [value]
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(len(name), len(args))), draw(st.sampled_from(["--bogus", "extra"])))
    return args


def _done_or_plainly_refused(args: list[str], exit_code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr, f"mlcd {args}: a traceback\n{stderr}"
    if exit_code == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    if exit_code == 2 and lines and lines[0].startswith("Usage: "):
        assert "Error" in stderr, stderr
        return
    if args[:2] == ["policy", "check"] and exit_code == 1 and not lines:
        assert all(PROBLEM_LINE.match(line) for line in stdout.splitlines()), stdout
        return
    assert len(lines) == 1, f"mlcd {args} exited {exit_code} with {stderr!r}"
    assert lines[0].startswith(("error: ", "replayed ")), lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00model: m")
    (tmp_path / "no_pipeline").mkdir()
    (tmp_path / "broken_pipeline").mkdir()
    (tmp_path / "broken_pipeline" / "pipeline.py").write_text("import nowhere_to_be_found\n")
    return tmp_path


def _environment(home: Path) -> dict[str, str | None]:
    """SQLite under `home`, and an API address where nothing listens (None: unset)."""
    return {
        "MLCD_HOME": str(home),
        "MLCD_API_URL": f"http://127.0.0.1:{processes.free_port()}",
        "MLCD_API_TOKEN": "mlcd_bad_input_cli_token",
        "MLCD_DATABASE_URL": None,
    }


def test_every_command_is_covered(home: Path) -> None:
    def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        subcommands = getattr(command, "commands", {})
        for name, sub in subcommands.items():
            yield from leaves(sub, (*path, name))
        if not subcommands:
            yield path

    covered = set(_commands(home)) | set(REFUSED_IN_PROCESS) | set(REFUSED_IN_A_PROCESS)
    assert set(leaves(typer.main.get_command(cli.app))) == covered


def test_any_arguments_succeed_or_fail_with_one_clear_line(home: Path) -> None:
    runner = CliRunner(env=_environment(home))
    assert runner.invoke(cli.app, ["db", "upgrade"]).exit_code == 0
    # Checking a policy loads cel-python, which raises the recursion limit: before Hypothesis starts.
    assert (
        runner.invoke(cli.app, ["policy", "check", str(REPO / "policies" / "wine_quality.yaml")]).exit_code
        == 0
    )
    refused = [[*name, *args] for name, variants in REFUSED_IN_PROCESS.items() for args in variants]

    def check(args: list[str]) -> None:
        result = runner.invoke(cli.app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"mlcd {args} raised {result.exception!r}"
        )
        assert result.exit_code != 0 or args not in refused
        _done_or_plainly_refused(args, result.exit_code, result.stdout, result.stderr)

    invocations = st.one_of(_invocation(_commands(home)), st.sampled_from(refused))
    assert explore("mlcd command line (in-process)", invocations, check, 200) >= 100


@pytest.mark.parametrize(
    "args", [[*name, *args] for name, variants in REFUSED_IN_A_PROCESS.items() for args in variants]
)
def test_serving_commands_refuse_bad_arguments_in_one_line(home: Path, args: list[str]) -> None:
    env = {k: v for k, v in {**os.environ, **_environment(home)}.items() if v is not None}
    result = subprocess.run(
        [MLCD, *args], capture_output=True, text=True, timeout=60, env=env, errors="replace"
    )
    assert result.returncode != 0
    _done_or_plainly_refused(args, result.returncode, result.stdout, result.stderr)
