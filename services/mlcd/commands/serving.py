"""`mlcd rollback MODEL` and `mlcd status [MODEL]`, through the mlcd HTTP API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer

app = typer.Typer(help="Serving: status and rollback.")

_TIMEOUT_S = 15.0


@app.command()
def rollback(
    model: str = typer.Argument(..., help="The model to roll back."),
    to_version: str | None = typer.Option(None, "--to-version", help="Serve this version (moves champion)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the journal."),
) -> None:
    """Send all of MODEL's traffic back to the previous revision (on-call tokens only)."""
    answer = _call("POST", f"/api/v1/models/{model}/rollback", {"to_version": to_version, "reason": reason})
    target = f"version {to_version}" if to_version else "the previous version"
    typer.echo(f"rollback of {model} to {target} requested (event {answer['event_id']})")


@app.command()
def status(
    model: str | None = typer.Argument(None, help="One model; default: every model with rollouts."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Champion, candidate, rollout and step, and the model's last events."""
    answer = _call("GET", f"/api/v1/models/{model}" if model else "/api/v1/models")
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


def _status_lines(answer: dict[str, Any]) -> list[str]:
    lines = [
        f"model      {answer['model']}",
        f"champion   {answer['champion'] or '-'}",
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


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    from pydantic import ValidationError

    from mlcd.config import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        raise _fail(f"invalid MLCD_* settings: {e.errors()[0]['msg']}") from None
    headers = {"Authorization": f"Bearer {_token(settings)}"}
    url = settings.effective_api_url.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise _fail(
            f"cannot reach the mlcd API at {settings.effective_api_url}: {type(e).__name__}"
        ) from None
    if response.status_code >= 400:
        raise _fail(f"{response.status_code}: {_detail(response)}")
    return response.json()


def _token(settings: Any) -> str:
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return str(settings.api_token.get_secret_value())
    path = settings.home / "admin-token"
    try:
        return str(path.read_text().strip())
    except OSError:
        raise _fail(f"no API token: set MLCD_API_TOKEN or run `mlcd up` once to write {path}") from None


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text.strip()[:200] or response.reason_phrase


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)
