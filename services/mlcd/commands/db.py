"""`mlcd db`: bring the state store's schema up to date, or say which revision it is at.

The only commands that open the database themselves: MLCD_DATABASE_URL is their credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer

from mlcd.commands._api import fail, not_text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from mlcd.config import Settings

T = TypeVar("T")

app = typer.Typer(help="State store schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade() -> None:
    """Apply every pending migration (safe while services run; they do the same at start)."""

    async def work(engine: AsyncEngine, settings: Settings) -> str:
        from mlcd.store import migrate

        await migrate.upgrade(engine)
        revision = await migrate.current_revision(engine)
        return f"state store {describe(settings.effective_database_url)} is at revision {revision}"

    typer.echo(_run(work))


@app.command()
def current() -> None:
    """Print the schema revision of the state store ("none" before the first upgrade)."""

    async def work(engine: AsyncEngine, settings: Settings) -> str | None:
        from mlcd.store import migrate

        return await migrate.current_revision(engine)

    revision = _run(work)
    typer.echo(revision or "none (run `mlcd db upgrade`)")


def describe(url: str) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(work: Callable[[AsyncEngine, Settings], Awaitable[T]]) -> T:
    """Run `work` against the configured store; any store or configuration failure exits 1 cleanly."""
    from sqlalchemy.exc import SQLAlchemyError

    from mlcd.config import Settings
    from mlcd.errors import ConfigError, MlcdError

    try:
        settings = Settings.load()
    except ConfigError as e:
        raise fail(str(e)) from None
    where = describe(settings.effective_database_url)
    try:
        return asyncio.run(_with_engine(work, settings))
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise fail(f"state store {where}: {reason}") from None
    except (MlcdError, OSError) as e:
        raise fail(f"state store {where}: {e}") from None
    except UnicodeEncodeError as e:
        raise not_text(e) from None


async def _with_engine(work: Callable[[AsyncEngine, Settings], Awaitable[T]], settings: Settings) -> T:
    from mlcd.store import database

    if settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = database.create_engine(settings.effective_database_url)
    try:
        return await work(engine, settings)
    finally:
        await engine.dispose()
