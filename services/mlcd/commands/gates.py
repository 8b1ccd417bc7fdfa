"""`mlcd gates`: list, show, approve and reject promotion gates through the mlcd HTTP API."""

from __future__ import annotations

import json

import typer

from mlcd.commands import _api

app = typer.Typer(help="Promotion gates waiting for (or given) an on-call decision.", no_args_is_help=True)

_JSON = typer.Option(False, "--json", help="The API's JSON answer.")


@app.command("list")
def list_(
    state: str | None = typer.Option(None, "--state", help="open, approved, rejected or expired."),
    model: str | None = typer.Option(None, "--model", help="Only gates of this model."),
    as_json: bool = _JSON,
) -> None:
    """Gates, newest first."""
    params = {key: value for key, value in {"state": state, "model": model}.items() if value}
    found = _api.call("GET", "/api/v1/gates", params=params)
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
    gate = _api.call("GET", f"/api/v1/gates/{_api.segment(gate_id)}")
    if as_json:
        typer.echo(json.dumps(gate, indent=2))
        return
    champion = f"v{gate['champion_version']}" if gate["champion_version"] else "none"
    typer.echo(f"gate {gate['id']}: {gate['model']} v{gate['model_version']} (champion {champion})")
    if gate.get("author") or gate.get("merge_request_url"):
        link = f"; merge request {gate['merge_request_url']}" if gate.get("merge_request_url") else ""
        typer.echo(f"caused by {gate.get('author') or 'nobody known'} (may not approve it){link}")
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
    reason: str = typer.Option(..., "--reason", help="Why (required); kept in the audit log and the event."),
) -> None:
    """Reject a gate with a reason: the promotion is rejected."""
    if not reason.strip():
        raise _api.fail('a rejection needs a reason: --reason "..."', 2)
    _decide(gate_id, "reject", reason)


def _decide(gate_id: str, decision: str, reason: str) -> None:
    answer = _api.call("POST", f"/api/v1/gates/{_api.segment(gate_id)}/{decision}", body={"reason": reason})
    gate = answer["gate"]
    typer.echo(f"gate {gate['id']} is {gate['state']}: {answer['message']}")
