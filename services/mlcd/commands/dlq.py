"""`mlcd dlq`: what the consumers parked, and sending it back to be handled again."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from mlcd.commands import _store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from mlcd.config import Settings
    from mlcd.store.dead_letters import DeadLetter

app = typer.Typer(help="Dead letters: records a consumer could not handle.", no_args_is_help=True)


@app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Include dead letters already replayed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000, help="Most recent N."),
) -> None:
    """List parked records, newest first."""

    async def work(engine: AsyncEngine, settings: Settings) -> list[DeadLetter]:
        from mlcd.store import dead_letters

        async with engine.connect() as conn:
            return await dead_letters.listing(conn, include_replayed=all_, limit=limit)

    letters = _store.run(work)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(letter.as_dict()))
        return
    if not letters:
        typer.echo("no dead letters" if all_ else "no dead letters waiting (--all shows replayed ones)")
        return
    typer.echo(f"{'ID':>6}  {'PARKED':19}  {'GROUP':24}  {'TYPE':40}  {'TRIES':>5}  ERROR")
    for d in letters:
        replayed = "  [replayed]" if d.replayed_at else ""
        typer.echo(
            f"{d.id:>6}  {d.created_at:%Y-%m-%d %H:%M:%S}  {d.consumer_group:24}  "
            f"{d.event_type or '(undecodable)':40}  {d.attempts:>5}  {d.error}{replayed}"
        )


@app.command()
def replay(
    ids: list[int] = typer.Argument(
        None, min=1, max=2**63 - 1, help="Dead letter ids; none: every one waiting."
    ),
) -> None:
    """Queue parked records back onto their original topics; the running relay publishes them."""

    async def work(engine: AsyncEngine, settings: Settings) -> int:
        from mlcd.store import dead_letters

        async with engine.begin() as conn:
            return await dead_letters.replay(conn, list(ids or []))

    count = _store.run(work)
    if ids and count < len(ids):
        typer.echo(f"replayed {count} of {len(ids)}: the others are unknown or already replayed", err=True)
        raise typer.Exit(1)
    typer.echo(f"replayed {count} dead letter(s); the relay publishes them to their original topics")
