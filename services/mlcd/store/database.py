"""Async engines for PostgreSQL (asyncpg) and SQLite (aiosqlite) with the same transaction semantics."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidatePoolError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str) -> AsyncEngine:
    """An engine whose SAVEPOINTs and transactions behave alike on both databases."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _make_sqlite_transactional(engine)
        return engine
    engine = create_async_engine(url, pool_size=10, max_overflow=10)
    _ping_on_checkout(engine)
    return engine


def _ping_on_checkout(engine: AsyncEngine) -> None:
    # What `pool_pre_ping` does, in one round trip instead of its three on asyncpg (BEGIN, a prepared
    # ";", ROLLBACK: the transaction is there for PgBouncer's transaction mode, which a simple-protocol
    # query, prepared nowhere, does not need). A pooled connection that does not answer invalidates the
    # pool (a restarted server dropped them all) and the checkout goes on with a new one; a new one is
    # not pinged.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_: Any, record: Any) -> None:
        record.info["fresh"] = True

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _: Any) -> None:
        if record.info.pop("fresh", False):
            return
        try:
            dbapi_connection.run_async(lambda driver: driver.execute("SELECT 1"))
        except Exception as e:  # whatever the reason, this connection is not to be used
            raise InvalidatePoolError(f"pooled connection did not answer: {e!r}") from e


def _make_sqlite_transactional(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; SQLAlchemy's documented recipe takes over
    # BEGIN itself. IMMEDIATE takes the write lock up front so two processes queue instead of failing.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


OUTAGE_ERRORS = (OperationalError, InterfaceError, OSError, TimeoutError)
"""What a store that went away raises; `answers` tells an outage from a failing statement."""


async def problem(engine: AsyncEngine, timeout_s: float = 5.0) -> str | None:
    """Why the store does not run a trivial statement within the timeout, or None when it does."""
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except (DBAPIError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


async def answers(engine: AsyncEngine, timeout_s: float = 5.0) -> bool:
    return await problem(engine, timeout_s) is None
