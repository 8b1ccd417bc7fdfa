"""Apply Alembic migrations at start-up and for `mlcd db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x6D6C6364  # "mlcd": one migrator at a time across replicas


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(_config(connection), "heads")


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return ",".join(sorted(MigrationContext.configure(connection).get_current_heads())) or None


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; safe to call from several processes at once."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
