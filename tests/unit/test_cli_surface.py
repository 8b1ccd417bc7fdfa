"""The `mlcd` command's surface that users and the Helm chart rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from mlcd import bootstrap, cli

MLCD = str(Path(sys.executable).parent / "mlcd")
DESIGNED = [
    "up",
    "demo",
    "serve",
    "gates",
    "rollback",
    "retrain",
    "status",
    "rollout",
    "explain",
    "events",
    "dlq",
    "policy",
    "pipelines",
    "db",
]


def _mlcd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLCD, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_lists_every_designed_command() -> None:
    result = _mlcd("--help")
    assert result.returncode == 0
    listed = {
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1
    }
    assert set(DESIGNED) <= listed, f"missing: {set(DESIGNED) - listed}"


def test_sub_commands_are_listed_under_their_groups() -> None:
    assert {"list", "show", "approve", "reject"} <= set(_mlcd("gates", "--help").stdout.split())
    assert {"list", "tail"} <= set(_mlcd("events", "--help").stdout.split())
    assert {"list", "replay"} <= set(_mlcd("dlq", "--help").stdout.split())
    assert "check" in _mlcd("policy", "--help").stdout.split()


def test_serving_an_unknown_service_fails_with_one_clear_line(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "MLCD_HOME": str(tmp_path)}
    result = _mlcd("serve", "frobnicator", env=env)
    assert result.returncode != 0
    assert "unknown service 'frobnicator'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_fails_every_kind_of_command_with_one_line_naming_it(tmp_path: Path) -> None:
    import os

    secret_bearing = "postgresql+asyncpg://ci:hunter2-db-pass@db:notaport/mlcd"
    for variable, value, named in (
        ("MLCD_DATABASE_URL", "not a url", "database_url"),
        ("MLCD_DATABASE_URL", secret_bearing, "database_url"),
        ("MLCD_HTTP_PORT", "eighty", "http_port"),
    ):
        env = {**os.environ, "MLCD_HOME": str(tmp_path), variable: value}
        for command in (["serve", "gatekeeper"], ["events", "list"], ["gates", "list"]):
            result = _mlcd(*command, env=env)
            assert result.returncode == 1, (command, result.stderr)
            (line,) = result.stderr.strip().splitlines()
            assert f"invalid MLCD_* settings: {named}:" in line
            assert "hunter2-db-pass" not in line


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    if hasattr(command, "commands"):  # a group (typer may bring its own click)
        for name, sub in command.commands.items():
            found += _command_paths(sub, (*path, name))
    return found


def test_help_speaks_of_text_and_numbers_not_python_types() -> None:
    """Every command's help labels its values TEXT, INTEGER, PATH…, never typer's `<str>`, `<int>`,
    `<bool>` or `list[str]`."""
    paths = _command_paths(typer.main.get_command(cli.app))
    assert len(paths) > 20
    for path in paths:
        shown = CliRunner().invoke(cli.app, [*path, "--help"], terminal_width=200)
        assert shown.exit_code == 0, (path, shown.output)
        python = re.findall(r"<(?:str|int|float|bool|path)>|list\[", shown.output)
        assert not python, f"mlcd {' '.join(path)} --help shows {python}:\n{shown.output}"


def test_serve_help_names_every_service_the_chart_can_run() -> None:
    shown = CliRunner().invoke(cli.app, ["serve", "--help"], terminal_width=200)
    for name in bootstrap.SERVICES:
        assert name in shown.output, f"`mlcd serve --help` does not name {name}"
