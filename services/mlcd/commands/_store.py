"""How a store command runs: settings read at entry, one engine, one clear line and exit 1 on failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from mlcd.config import Settings

T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` on stderr; raise the returned Exit to leave with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def not_text(error: UnicodeEncodeError) -> typer.Exit:
    """Exit for an argument holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    around = error.object[max(0, error.start - 10) : error.end + 10]
    return fail(f"an argument is not UTF-8 text: {around!r}")


def run(work: Callable[[AsyncEngine, Settings], Awaitable[T]]) -> T:
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
        hint = " (run `mlcd db upgrade`?)" if _looks_unmigrated(reason) else ""
        raise fail(f"state store {where}: {reason}{hint}") from None
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


def describe(url: str) -> str:
    """The database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _looks_unmigrated(reason: str) -> bool:
    lowered = reason.lower()
    return "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered)
