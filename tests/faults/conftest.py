"""Fixtures of the fault tests: a PostgreSQL server each test may stop and start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres_server import PostgresServer


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own on a free port; removed afterwards."""
    server = PostgresServer()
    yield server
    server.destroy()
