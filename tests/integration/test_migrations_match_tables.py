"""The schema Alembic's migrations build is the one the store modules' tables describe, on both stores.

Alembic's own autogenerate comparison finds what differs; a column a table gained without a migration (or
a migration without its column) fails here instead of as "no such column" in a running service.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

# Each store module adds its tables to `metadata` when imported.
from mlcd.store import dead_letters, figures, gates, ingest, notices, rollouts, training, validations  # noqa: F401
from mlcd.store.tables import metadata


async def test_the_migrated_schema_is_the_tables_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        differences = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert differences == []
