"""`mlcd gates`: list, show, approve and reject promotion gates through the mlcd HTTP API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer

app = typer.Typer(help="Promotion gates waiting for (or given) an on-call decision.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="The API's JSON answer.")
_TIMEOUT_S = 15.0


@app.command("list")
def list_(
    state: str | None = typer.Option(None, "--state", help="open, approved, rejected or expired."),
    model: str | None = typer.Option(None, "--model", help="Only gates of this model."),
    as_json: bool = _JSON,
) -> None:
    """Gates, newest first."""
    params = {key: value for key, value in {"state": state, "model": model}.items() if value}
    found = _call("GET", "/api/v1/gates", params=params)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("no gates" + (" matching the filters" if params else ""))
    for gate in found:
        typer.echo(
            f"{gate['id']}  {gate['state']:<8}  {gate['model']} v{gate['model_version']}  "
            f"approvals {len(gate['approvals'])}/{gate['approvals_required']}  expires {gate['expires_at']}"
        )


@app.command()
def show(gate_id: str = typer.Argument(..., help="The gate's id."), as_json: bool = _JSON) -> None:
    """One gate: its rules with the values they saw, and its audit log."""
    gate = _call("GET", f"/api/v1/gates/{gate_id}")
    if as_json:
        typer.echo(json.dumps(gate, indent=2))
        return
    champion = f"v{gate['champion_version']}" if gate["champion_version"] else "none"
    typer.echo(f"gate {gate['id']}: {gate['model']} v{gate['model_version']} (champion {champion})")
    typer.echo(
        f"state {gate['state']}"
        + (f" by {gate['decided_by']}: {gate['reason']}" if gate["decided_by"] else "")
    )
    typer.echo(
        f"approvals {', '.join(gate['approvals']) or 'none'} of {gate['approvals_required']} "
        f"from {', '.join(gate['approver_groups'])}; expires {gate['expires_at']}"
    )
    typer.echo("rules:")
    for rule in gate["rules"]:
        verdict = "pass" if rule["passed"] else "FAIL"
        seen = ", ".join(f"{path}={value}" for path, value in rule["values"].items())
        error = f"  {rule['error']}" if rule["error"] else ""
        typer.echo(f"  {verdict}  {rule['name']}: {rule['expression']}  [{seen}]{error}")
    typer.echo("audit:")
    for entry in gate["audit"]:
        typer.echo(
            f"  {entry['at']}  {entry['actor']} via {entry['via']}: {entry['action']} {entry['outcome']}"
            + (f" ({entry['reason']})" if entry["reason"] else "")
        )


@app.command()
def approve(
    gate_id: str = typer.Argument(..., help="The gate's id."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the audit log."),
) -> None:
    """Approve a gate (your token must be in one of the policy's approver groups)."""
    _decide(gate_id, "approve", reason)


@app.command()
def reject(
    gate_id: str = typer.Argument(..., help="The gate's id."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the audit log and the event."),
) -> None:
    """Reject a gate: the promotion is rejected."""
    _decide(gate_id, "reject", reason)


def _decide(gate_id: str, decision: str, reason: str) -> None:
    answer = _call("POST", f"/api/v1/gates/{gate_id}/{decision}", body={"reason": reason})
    gate = answer["gate"]
    typer.echo(f"gate {gate['id']} is {gate['state']}: {answer['message']}")


def _call(
    method: str, path: str, *, params: dict[str, str] | None = None, body: dict[str, Any] | None = None
) -> Any:
    from pydantic import ValidationError

    from mlcd.config import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        raise _fail(f"invalid MLCD_* settings: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    token = _token(settings)
    url = settings.effective_api_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}", "X-Mlcd-Via": "cli"}
    try:
        response = httpx.request(method, url, params=params, json=body, headers=headers, timeout=_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise _fail(
            f"cannot reach the mlcd API at {settings.effective_api_url}: {type(e).__name__}"
        ) from None
    if response.status_code >= 400:
        raise _fail(f"{response.status_code}: {_problem(response)}")
    return response.json()


def _token(settings: Any) -> str:
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return str(settings.api_token.get_secret_value())
    path = settings.home / "admin-token"
    try:
        return str(path.read_text().strip())
    except OSError:
        raise _fail(f"no API token: set MLCD_API_TOKEN or run `mlcd up` once to write {path}") from None


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        message = str(body.get("error") or body.get("detail") or body)
        return message + (f" (gate is {body['state']})" if "state" in body else "")
    return str(body)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)
