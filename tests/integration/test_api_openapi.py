"""Schemathesis over the whole HTTP surface `mlcd up` serves: no input a caller sends earns a 5xx."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error

from mlcd import bootstrap
from mlcd.config import Settings
from mlcd.runner import ServiceHost
from tests.support import ingest_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mlcd_openapi_oncall_token"


@pytest.fixture
def api_url(tmp_path: Path, mlflow_uri: str) -> Iterator[str]:
    tokens = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(yaml.safe_dump([{"name": "olivia", "groups": ["oncall"], "token_sha256": digest}]))
    configured = Settings(
        home=tmp_path / "home",
        policies_dir=REPO / "policies",
        pipelines_dir=REPO / "pipelines",
        mlflow_tracking_uri=mlflow_uri,
        api_tokens_file=tokens,
        gitlab_webhook_secret=SecretStr(ingest_app.GITLAB_SECRET),
        minio_webhook_token=SecretStr(ingest_app.MINIO_TOKEN),
        webhook_max_body_bytes=4096,
    )

    @asynccontextmanager
    async def app() -> AsyncIterator[FastAPI]:
        ports = bootstrap.build_ports(configured)
        host = ServiceHost(configured, [], ports)
        await host.start()
        try:
            yield bootstrap.app(configured, host, ports, with_ui=True)
        finally:
            await host.stop()
            await bootstrap.close_ports(ports)

    with ingest_app.serving_in_thread(app) as url:
        yield url


# Importing the adapters' SDKs (mlflow, kfp) raises the recursion limit, which Hypothesis warns about.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_no_request_to_any_endpoint_earns_a_server_error(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/v1/gates/{gate_id}/approve",
        "/api/v1/models/{model}/rollback",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                case.call_and_validate(headers=headers, timeout=15, checks=[not_a_server_error])

        check()
