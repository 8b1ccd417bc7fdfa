"""`mlcd rollback MODEL`, `mlcd retrain MODEL` and `mlcd status [MODEL]`, through the mlcd HTTP API."""

from __future__ import annotations

import json
from typing import Any

import typer

from mlcd.commands import _api

app = typer.Typer(help="Serving: status, rollback and retrain.")


@app.command()
def rollback(
    model: str = typer.Argument(..., help="The model to roll back."),
    to_version: str | None = typer.Option(None, "--to-version", help="Serve this version (moves champion)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the journal."),
) -> None:
    """Send all of MODEL's traffic back to the previous revision, or to --to-version (on-call only).

    Refused at once when the model, the version or an earlier version is unknown."""
    body = {"to_version": to_version, "reason": reason}
    answer = _api.call("POST", f"/api/v1/models/{_api.segment(model)}/rollback", body=body)
    target = f"version {to_version}" if to_version else "the previous version"
    typer.echo(f"rollback of {model} to {target} requested (event {answer['event_id']})")


@app.command()
def retrain(
    model: str = typer.Argument(..., help="The model to train again."),
    reason: str = typer.Option(..., "--reason", help="Why (required), for the journal."),
    data: str | None = typer.Option(
        None, "--data", help="Batch to train on, s3://bucket/key; default: the last validated one."
    ),
) -> None:
    """Start a training run of MODEL on its last validated batch or on --data (on-call only)."""
    if not reason.strip():
        raise _api.fail('a retrain needs a reason: --reason "..."', 2)
    body = {"reason": reason, "data_uri": data}
    answer = _api.call("POST", f"/api/v1/models/{_api.segment(model)}/retrain", body=body)
    typer.echo(f"retraining of {model} on {answer['data_uri']} requested (event {answer['event_id']})")


@app.command()
def status(
    model: str | None = typer.Argument(None, help="One model; default: every model with rollouts."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Champion, candidate, rollout and step, and the model's last events."""
    answer = _api.call("GET", f"/api/v1/models/{_api.segment(model)}" if model else "/api/v1/models")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    elif model is None:
        if not answer:
            typer.echo("no rollouts yet")
        for rollout in answer:
            typer.echo(f"{rollout['model']}: {_rollout_line(rollout)}")
    else:
        typer.echo("\n".join(_status_lines(answer)))


def _rollout_line(rollout: dict[str, Any]) -> str:
    line = f"version {rollout['version']} {rollout['state']}"
    if rollout["state"] == "running":
        line += f" at {rollout['traffic_percent']}% (step {rollout['step']} of {len(rollout['steps'])})"
    return line + (f" - {rollout['reason']}" if rollout.get("reason") else "")


def _observed_line(observed: dict[str, Any] | None, problem: str | None) -> str:
    """What the platform reports serving: the split by revision, and why it is not Ready."""
    if problem:
        return f"unknown ({problem})"
    if not observed:
        return "-"
    split = ", ".join(f"{name} {percent}%" for name, percent in observed["traffic"].items()) or "no traffic"
    versions = f"stable {observed['stable_version'] or '-'}"
    if observed["canary_version"]:
        versions += (
            f", canary {observed['canary_version']} at {observed['canary_percent_observed']}%"
            f" (asked {observed['canary_percent_wanted']}%)"
        )
    ready = "Ready" if observed["ready"] else f"not Ready: {observed['message']}"
    return f"{versions}; {split}; {ready}"


def _status_lines(answer: dict[str, Any]) -> list[str]:
    lines = [
        f"model      {answer['model']}",
        f"champion   {answer['champion'] or '-'}",
        f"serving    {_observed_line(answer.get('serving'), answer.get('serving_problem'))}",
        f"candidate  {answer['candidate'] or '-'}",
        f"rollout    {_rollout_line(answer['rollout']) if answer['rollout'] else '-'}",
    ]
    if answer.get("waiting"):
        lines.append(f"waiting    version {answer['waiting']['version']} (supersedes the rollout)")
    if answer.get("last_rollout") and not answer["rollout"]:
        lines.append(f"last       {_rollout_line(answer['last_rollout'])}")
    lines.append("events")
    for event in answer["events"][:10]:
        lines.append(f"  {event['time']}  {event['type']}")
    return lines
