"""`mlcd explain FILE`: what mlcd will do with a webhook delivery or a CloudEvent, with no side effect.

FILE holds a structured CloudEvent, a delivery as `{"source", "headers", "body"}`, or a raw HTTP request
(`POST /hooks/gitlab`, headers, a blank line, the body). By default the running mlcd answers (it reads
the registry's champion, open gates and debounce state, and asks its serving platform whether a candidate
can be served: the gatekeeper's `servable` rule); `--offline` judges against the policies folder alone, as
a policy repository's CI can. `--expect TYPE...` exits 1 unless exactly those events would be emitted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from mlcd.commands import _api

app = typer.Typer(help="What mlcd will do with an event, under today's policies.")


@app.command()
def explain(
    file: Path = typer.Argument(
        ..., help="CloudEvent JSON, {source, headers, body} JSON, or a raw HTTP request."
    ),
    expect: list[str] = typer.Option(
        None, "--expect", help="Event type mlcd should emit (repeat); exit 1 on any difference."
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="No server: the policies folder (MLCD_POLICIES_DIR) alone, no registry nor serving platform.",
    ),
    as_json: bool = typer.Option(False, "--json", help="The explanation as JSON."),
) -> None:
    """Print the events mlcd would emit and what each service would decide; nothing is changed."""
    from mlcd import explain as explaining
    from mlcd.errors import MlcdError

    try:
        text = file.read_bytes()
    except OSError as e:
        raise _api.fail(f"cannot read {str(file)!r}: {e.strerror or e}") from None
    try:
        given = explaining.read_input(text)
    except MlcdError as e:
        raise _api.fail(f"{str(file)!r}: {' '.join(str(e).split())}") from None
    if offline:
        found = _offline(given)
    else:
        document: dict[str, Any] = (
            given.structured() if not isinstance(given, explaining.Delivery) else _delivery(given)
        )
        found = explaining.Explanation(**_api.call("POST", "/api/v1/explain", body=document))
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
    else:
        typer.echo("emits:    " + (" → ".join(found.emits) or "nothing"))
        if found.possible:
            typer.echo("then one of, depending on the work: " + ", ".join(dict.fromkeys(found.possible)))
        for step in found.steps:
            typer.echo(f"  {step}")
    if expect:
        problem = found.mismatch(list(expect))
        if problem:
            raise _api.fail(f"not what was expected: {problem}")


def _delivery(given: Any) -> dict[str, Any]:
    body = given.body.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return {**{k: v for k, v in asdict(given).items() if k != "body"}, "body": parsed}


def _offline(given: Any) -> Any:
    from mlcd import explain as explaining
    from mlcd.config import Settings
    from mlcd.errors import ConfigError
    from mlcd.policy.book import PolicyBook

    try:
        settings = Settings.load()
    except ConfigError as e:
        raise _api.fail(str(e)) from None
    return asyncio.run(explaining.explain(given, PolicyBook(settings.policies_dir), None, None))
