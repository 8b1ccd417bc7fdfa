"""`mlcd pipelines compile`: compile a pipeline folder into the KFP IR YAML a cluster takes."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Kubeflow pipelines kept in this repository.", no_args_is_help=True)


@app.callback()
def pipelines() -> None:
    """Kubeflow pipelines (a group, so the command reads `mlcd pipelines compile`)."""


@app.command()
def compile(
    path: Path = typer.Argument(..., help="Pipeline folder holding pipeline.py."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="YAML file; default: <folder name>.yaml."
    ),
) -> None:
    """Compile PATH/pipeline.py's @dsl.pipeline; exit 2 with a one-line reason when it does not compile."""
    from mlcd.adapters.kfp_compiler import CompileError, compile_pipeline

    target = output or Path(f"{path.resolve().name}.yaml")
    try:
        name = compile_pipeline(path, target)
    except CompileError as e:
        typer.echo(f"error: {' '.join(str(e).split())}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"compiled {name} from {path} into {target}")
