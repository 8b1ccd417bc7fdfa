"""`mlcd dlq`: what the consumers parked, and sending it back to be handled again, through the mlcd API."""

from __future__ import annotations

import json
from datetime import datetime

import typer

from mlcd.commands import _api

app = typer.Typer(help="Dead letters: records a consumer could not handle.", no_args_is_help=True)


@app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Include dead letters already replayed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000, help="Most recent N."),
) -> None:
    """List parked records, newest first (any API token)."""
    letters = _api.call("GET", "/api/v1/dead-letters", params={"all": all_, "limit": limit})
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(letter))
        return
    if not letters:
        typer.echo("no dead letters" if all_ else "no dead letters waiting (--all shows replayed ones)")
        return
    typer.echo(f"{'ID':>6}  {'PARKED':19}  {'GROUP':24}  {'TYPE':40}  {'TRIES':>5}  ERROR")
    for d in letters:
        replayed = "  [replayed]" if d["replayed_at"] else ""
        parked = datetime.fromisoformat(d["created_at"])
        typer.echo(
            f"{d['id']:>6}  {parked:%Y-%m-%d %H:%M:%S}  {d['consumer_group']:24}  "
            f"{d['event_type'] or '(undecodable)':40}  {d['attempts']:>5}  {d['error']}{replayed}"
        )


@app.command()
def replay(
    ids: list[int] = typer.Argument(
        None, min=1, max=2**63 - 1, help="Dead letter ids; none: every one waiting."
    ),
) -> None:
    """Queue parked records back onto their original topics (admin token); the relay publishes them."""
    answer = _api.call("POST", "/api/v1/dead-letters/replay", body={"ids": list(ids or [])})
    count = int(answer["replayed"])
    if ids and count < len(ids):
        typer.echo(f"replayed {count} of {len(ids)}: the others are unknown or already replayed", err=True)
        raise typer.Exit(1)
    typer.echo(f"replayed {count} dead letter(s); the relay publishes them to their original topics")
