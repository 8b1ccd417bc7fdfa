"""`mlcd db`: bring the state store's schema up to date, or say which revision it is at."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from mlcd.commands import _store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from mlcd.config import Settings

app = typer.Typer(help="State store schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade() -> None:
    """Apply every pending migration (safe while services run; they do the same at start)."""

    async def work(engine: AsyncEngine, settings: Settings) -> str:
        from mlcd.store import migrate

        await migrate.upgrade(engine)
        revision = await migrate.current_revision(engine)
        return f"state store {_store.describe(settings.effective_database_url)} is at revision {revision}"

    typer.echo(_store.run(work))


@app.command()
def current() -> None:
    """Print the schema revision of the state store ("none" before the first upgrade)."""

    async def work(engine: AsyncEngine, settings: Settings) -> str | None:
        from mlcd.store import migrate

        return await migrate.current_revision(engine)

    revision = _store.run(work)
    typer.echo(revision or "none (run `mlcd db upgrade`)")
