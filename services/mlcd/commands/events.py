"""`mlcd events`: the event journal (every event published), listed or followed, through the mlcd API."""

from __future__ import annotations

import json
from typing import Any

import typer

from mlcd.commands import _api

app = typer.Typer(help="The event journal: every event mlcd published.", no_args_is_help=True)

_MODEL = typer.Option(None, "--model", help="Only events about this model.")
_TYPE = typer.Option(None, "--type", help="Only this CloudEvents type, e.g. mlcd.data.validated.v1.")
_JSON = typer.Option(False, "--json", help="Structured CloudEvents, one JSON object a line.")


@app.command("list")
def list_(
    model: str | None = _MODEL,
    event_type: str | None = _TYPE,
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Most recent N."),
    as_json: bool = _JSON,
) -> None:
    """Journaled events, newest first."""
    params = _filters(model, event_type) | {"limit": limit}
    found = _api.call("GET", "/api/v1/events", params=params)
    if not found and not as_json:
        typer.echo("no events journaled" + (" matching the filters" if model or event_type else ""))
    for event in found:
        typer.echo(_line(event, as_json))


@app.command()
def tail(
    model: str | None = _MODEL,
    event_type: str | None = _TYPE,
    as_json: bool = _JSON,
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many events."),
    timeout_s: float | None = typer.Option(
        None, "--timeout", min=0.1, help="Stop after this many seconds; with --count, exit 1 if short."
    ),
) -> None:
    """Print events as they are journaled, until Ctrl-C (Server-Sent Events from the API).

    In a script, `--type T --model M --count 1 --timeout 600` waits for one event and fails if none comes.
    """
    seen = 0
    try:
        for event in _api.stream(
            "/api/v1/events/stream", params=_filters(model, event_type), timeout_s=timeout_s
        ):
            typer.echo(_line(event, as_json))
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if count is not None:
        raise _api.fail(f"timed out after {timeout_s:g} s with {seen} of {count} event(s)")


def _filters(model: str | None, event_type: str | None) -> dict[str, Any]:
    return {key: value for key, value in {"model": model, "type": event_type}.items() if value}


def _line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, separators=(",", ":"))
    return f"{event['time'] or '':32}  {event['type']:44}  {event['subject'] or '-':20}  {event['id']}"
