"""`mlcd serve SERVICE` as the Helm chart runs it: real processes against Tansu and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlcd import auth
from tests.support.mlcd_service import MLCD, REPO, ServiceProcess

SECRET = "gitlab-secret-for-serve-test"


@pytest.fixture
def environment(tmp_path: Path, kafka_bootstrap: str, pg_url: str, mlflow_uri: str) -> dict[str, str]:
    tokens = tmp_path / "home" / "api-tokens.yaml"
    token = auth.ensure_tokens_file(tokens)
    assert token is not None
    return {
        **os.environ,
        "MLCD_HOME": str(tmp_path / "home"),
        "MLCD_API_TOKENS_FILE": str(tokens),
        "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MLCD_KAFKA_NAMESPACE": f"serve{uuid.uuid4().hex[:8]}.",
        "MLCD_DATABASE_URL": pg_url,
        "MLCD_MLFLOW_TRACKING_URI": mlflow_uri,
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
        "MLCD_GITLAB_WEBHOOK_SECRET": SECRET,
    }


@pytest.fixture
def gatekeeper(environment: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("gatekeeper", environment, tmp_path).start()
    yield service
    service.stop()


def test_consumer_service_is_ready_and_drains_on_sigterm(gatekeeper: ServiceProcess) -> None:
    ready = httpx.get(f"{gatekeeper.base_url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    parts = ready.json()["parts"]
    assert parts["store"] is None and len(parts) > 1 and set(parts.values()) == {None}, parts
    assert "mlcd_events_consumed_total" in httpx.get(f"{gatekeeper.base_url}/metrics", timeout=5).text

    assert gatekeeper.stop() == 0


def test_ingest_accepts_a_push_and_journals_it(environment: dict[str, str], tmp_path: Path) -> None:
    ingest = ServiceProcess("ingest", environment, tmp_path).start()
    try:
        body = (REPO / "tests" / "fixtures" / "ingest" / "gitlab_push.json").read_bytes()
        answer = httpx.post(
            f"{ingest.base_url}/hooks/gitlab",
            content=body,
            headers={
                "X-Gitlab-Token": SECRET,
                "X-Gitlab-Event": "Push Hook",
                "X-Gitlab-Event-UUID": str(uuid.uuid4()),
                "Content-Type": "application/json",
            },
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        refused = httpx.post(
            f"{ingest.base_url}/hooks/gitlab", content=body, headers={"X-Gitlab-Token": "wrong"}, timeout=30
        )
        assert refused.status_code == 401

        listed = subprocess.run(
            [MLCD, "events", "list", "--json"],
            env={**environment, "MLCD_API_URL": ingest.base_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert answer.json()["events"][0]["id"] in listed.stdout
    finally:
        assert ingest.stop() == 0
