"""`mlcd events`: the event journal (every event published), listed or followed as it grows."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import typer

from mlcd.commands import _store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from mlcd.config import Settings

app = typer.Typer(help="The event journal.", no_args_is_help=True)

_MODEL = typer.Option(None, "--model", help="Only events about this model.")
_TYPE = typer.Option(None, "--type", help="Only this CloudEvents type, e.g. mlcd.data.validated.v1.")


@app.command("list")
def list_(
    model: str | None = _MODEL,
    event_type: str | None = _TYPE,
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Most recent N."),
    as_json: bool = typer.Option(False, "--json", help="Structured CloudEvents, one JSON object a line."),
) -> None:
    """Journaled events, newest first."""

    async def work(engine: AsyncEngine, settings: Settings) -> list[dict[str, Any]]:
        from mlcd.store import outbox

        async with engine.connect() as conn:
            rows = await outbox.journal(conn, model=model, event_type=event_type, limit=limit)
        return [event for _, event in rows]

    found = _store.run(work)
    if not found and not as_json:
        typer.echo("no events journaled" + (" matching the filters" if model or event_type else ""))
    for event in found:
        typer.echo(_line(event, as_json))


@app.command()
def tail(
    model: str | None = _MODEL,
    event_type: str | None = _TYPE,
    as_json: bool = typer.Option(False, "--json", help="Structured CloudEvents, one JSON object a line."),
    interval_s: float = typer.Option(0.5, "--interval", min=0.05, help="Seconds between looks."),
) -> None:
    """Print events as they are journaled, until Ctrl-C."""

    async def work(engine: AsyncEngine, settings: Settings) -> None:
        printed: set[int] = set()
        async with engine.connect() as conn:
            cursor = await _oldest_unsettled_seq(conn) - 1
            cursor, _already_journaled = await _journaled_after(conn, cursor, printed, model, event_type)
        typer.echo(f"following the journal after event #{cursor} (Ctrl-C to stop)", err=True)
        while True:
            async with engine.connect() as conn:
                cursor, fresh = await _journaled_after(conn, cursor, printed, model, event_type)
            for event in fresh:
                typer.echo(_line(event, as_json))
            await asyncio.sleep(interval_s)

    try:
        _store.run(work)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


async def _oldest_unsettled_seq(conn: AsyncConnection) -> int:
    """The seq of the oldest row still waiting for the relay, else the one after the newest row."""
    from sqlalchemy import func, select

    from mlcd.store.tables import outbox

    unsent = await conn.scalar(select(func.min(outbox.c.seq)).where(outbox.c.sent_at.is_(None)))
    if unsent is not None:
        return int(unsent)
    return int(await conn.scalar(select(func.max(outbox.c.seq))) or 0) + 1


async def _journaled_after(
    conn: AsyncConnection, cursor: int, printed: set[int], model: str | None, event_type: str | None
) -> tuple[int, list[dict[str, Any]]]:
    """Events journaled since the last look; returns the new cursor and the events not yet printed.

    Every row up to `cursor` is settled. A row with a lower seq can be sent after a higher one (the
    ingest journals directly what the broker acknowledged), so the cursor stops below the oldest row
    still waiting for the relay, and `printed` remembers what above it was already shown.
    """
    from sqlalchemy import func, select

    from mlcd.store import outbox
    from mlcd.store.tables import outbox as outbox_table

    async def after(seq: int) -> list[tuple[int, dict[str, Any]]]:
        return await outbox.journal(
            conn, model=model, event_type=event_type, after_seq=seq, ascending=True, limit=1000
        )

    highest = max(printed, default=cursor)
    rows = await after(highest)
    if highest > cursor:
        rows = [row for row in await after(cursor) if row[0] <= highest and row[0] not in printed] + rows
    printed.update(seq for seq, _ in rows)
    oldest_unsent = await conn.scalar(
        select(func.min(outbox_table.c.seq)).where(outbox_table.c.sent_at.is_(None))
    )
    settled = max(printed, default=cursor)
    if oldest_unsent is not None:
        settled = min(settled, int(oldest_unsent) - 1)
    cursor = max(cursor, settled)
    printed.difference_update({seq for seq in printed if seq <= cursor})
    return cursor, [event for _, event in rows]


def _line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, separators=(",", ":"))
    return f"{event['time'] or '':32}  {event['type']:44}  {event['subject'] or '-':20}  {event['id']}"
