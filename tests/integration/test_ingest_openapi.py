"""Schemathesis over the ingest OpenAPI document: no 5xx, every response as documented."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings

from mlcd import events
from mlcd.bus.memory import MemoryBus
from mlcd.store import migrate
from mlcd.store.database import create_engine
from tests.support import ingest_app

pytestmark = pytest.mark.slow

VALID_CREDENTIALS = {
    "X-Gitlab-Token": ingest_app.GITLAB_SECRET,
    "Authorization": f"Bearer {ingest_app.MINIO_TOKEN}",
}


@pytest.fixture
def ingest_url(tmp_path: Path) -> Iterator[str]:
    @asynccontextmanager
    async def app() -> AsyncIterator[FastAPI]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mlcd.db'}")
        await migrate.upgrade(engine)
        try:
            yield ingest_app.build(
                ingest_app.settings(webhook_max_body_bytes=4096), MemoryBus(events.TOPICS), engine
            )
        finally:
            await engine.dispose()

    with ingest_app.serving_in_thread(app) as url:
        yield url


@pytest.fixture
def ingest_schema(ingest_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{ingest_url}/openapi.json")


def test_no_input_yields_a_server_error_or_an_undocumented_response(
    ingest_schema: schemathesis.BaseSchema,
) -> None:
    operations = [result.ok() for result in ingest_schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        f"/hooks/{s}" for s in ("gitlab", "minio", "alertmanager", "mlflow")
    }
    for operation in operations:
        # The document admits any body (unknown shapes are parked, not refused), so there is no
        # negative input to generate: every generated case must get a documented, non-5xx answer.

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=10)
            case.call_and_validate(headers=VALID_CREDENTIALS, timeout=10)

        check()


def test_openapi_document_declares_every_webhook_and_its_answers(
    ingest_schema: schemathesis.BaseSchema,
) -> None:
    document = ingest_schema.raw_schema
    for source in ("gitlab", "minio", "alertmanager", "mlflow"):
        answers = document["paths"][f"/hooks/{source}"]["post"]["responses"]
        assert {"200", "202", "401", "413", "503"} <= set(answers)
