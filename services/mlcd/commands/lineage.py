"""`mlcd lineage MODEL VERSION`: where a model version came from and where it went, through the mlcd API."""

from __future__ import annotations

import json

import typer

from mlcd import lineage
from mlcd.commands import _api

app = typer.Typer()


@app.command("lineage")
def lineage_of(
    model: str = typer.Argument(..., help="The model."),
    version: str = typer.Argument(..., help="Its registry version, e.g. 3."),
    as_json: bool = typer.Option(False, "--json", help="The graph as JSON, each step with its event."),
) -> None:
    """Data batch, validation, pipeline, training run, gate and rollouts of MODEL VERSION, oldest first."""
    path = f"/api/v1/models/{_api.segment(model)}/versions/{_api.segment(version)}/lineage"
    answer = _api.call("GET", path)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo("\n".join(lineage.render(lineage.Lineage.model_validate(answer))))
