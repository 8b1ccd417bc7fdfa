"""`mlcd rollout promote|abort|pause|resume|retry MODEL`: on-call control of a rollout, through the API."""

from __future__ import annotations

import typer

from mlcd.commands import _api

app = typer.Typer(help="On-call control of a model's rollout: promote, abort, pause, resume, retry.")

_DONE = {
    "promote": "promotion to 100 % requested; the analysis is skipped",
    "abort": "abort requested; traffic goes back to the previous version",
    "pause": "paused; it waits for promote, abort or resume",
    "resume": "resumed; the step's deadline starts again",
    "retry": "a new rollout of the rolled-back version was requested",
}


def _control(action: str, model: str) -> None:
    answer = _api.call("POST", f"/api/v1/models/{_api.segment(model)}/rollout/{action}", body={})
    suffix = f" (event {answer['event_id']})" if answer.get("event_id") else ""
    typer.echo(f"{model} version {answer['version']}: {_DONE[action]}{suffix}")


@app.command()
def promote(model: str = typer.Argument(..., help="The model whose rollout goes to 100 % now.")) -> None:
    """Skip the remaining steps and their analysis: all traffic to the candidate (on-call only)."""
    _control("promote", model)


@app.command()
def abort(model: str = typer.Argument(..., help="The model whose rollout is given up.")) -> None:
    """Roll the candidate back: all traffic to the previous version (on-call only)."""
    _control("abort", model)


@app.command()
def pause(model: str = typer.Argument(..., help="The model whose rollout stops where it is.")) -> None:
    """Hold the rollout at its step: no analysis, no step, until promote, abort or resume."""
    _control("pause", model)


@app.command()
def resume(model: str = typer.Argument(..., help="The paused model's rollout.")) -> None:
    """Go on with a paused rollout; its step's progress deadline starts again (on-call only)."""
    _control("resume", model)


@app.command()
def retry(model: str = typer.Argument(..., help="The model whose last rollout was rolled back.")) -> None:
    """Roll the rolled-back (or refused) version out again from the first step (on-call only)."""
    _control("retry", model)
