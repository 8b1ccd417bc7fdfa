"""`mlcd policy check`: validate policy files before they are committed or reloaded."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Promotion and monitoring policies.", no_args_is_help=True)


@app.callback()
def policy() -> None:
    """Promotion and monitoring policies (a group, so the command reads `mlcd policy check`)."""


@app.command()
def check(files: list[Path] = typer.Argument(..., help="Policy YAML files.")) -> None:
    """Schema, every CEL expression, unknown fields and identifiers: `file:line: message` per error."""
    from mlcd.policy.check import check_file

    problems = [problem for path in files for problem in check_file(path)]
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        raise typer.Exit(1)
    typer.echo("ok")
