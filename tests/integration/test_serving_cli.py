"""`mlcd status`, `mlcd rollback` and `mlcd retrain` against the deployer's HTTP API on a real loopback port;
requests that cannot be carried out are refused at once, with the reason and a non-zero exit."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from mlcd import auth, cli, events, http
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.deployer import app
from mlcd.policy.book import PolicyBook
from mlcd.store import migrate, rollouts
from mlcd.store.database import create_engine
from tests.integration.test_gates import register
from tests.support import ingest_app

TOKENS = {
    "oncall-token": auth.Identity("olga", frozenset({"oncall"})),
    "dev-token": auth.Identity("dan", frozenset()),
}


@pytest.fixture
def api(tmp_path: Path, mlflow_uri: str) -> Iterator[tuple[str, str, Path]]:
    model = f"cli_{uuid.uuid4().hex[:8]}"
    database = tmp_path / "mlcd.db"

    @asynccontextmanager
    async def make_app() -> AsyncIterator[FastAPI]:
        engine = create_engine(f"sqlite+aiosqlite:///{database}")
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            await rollouts.start(
                conn,
                model=model,
                version="2",
                artifact_uri="models:/2",
                previous_version="1",
                previous_artifact_uri="models:/1",
                steps=[10, 50, 100],
                next_analysis_at=None,
                cause_event_id="seed",
                correlation_id="seed",
            )
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / f"{model}.yaml").write_text(f"model: {model}\n")
        (policies / f"{model}_t.yaml").write_text(f"model: {model}_t\ntraining:\n  pipeline: wine_quality\n")
        router = app.router(engine, None, MlflowRegistry(mlflow_uri), TOKENS.get, PolicyBook(policies))

        async def ready() -> dict[str, str | None]:
            return {}

        yield http.create_app([router], ready)
        await engine.dispose()

    register(mlflow_uri, model, 0.8)  # version 1, the one before the rollout's
    with ingest_app.serving_in_thread(make_app) as url:
        yield url, model, database


def _mlcd(url: str, token: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args), env={"MLCD_API_URL": url, "MLCD_API_TOKEN": token})
    return result.exit_code, result.output


def test_status_shows_the_rollout_and_its_step(api: tuple[str, str, Path]) -> None:
    url, model, _ = api
    code, output = _mlcd(url, "dev-token", "status", model)
    assert code == 0, output
    assert "candidate  2" in output
    assert "rollout    version 2 running at 10% (step 1 of 3)" in output

    code, output = _mlcd(url, "dev-token", "status")
    assert f"{model}: version 2 running at 10% (step 1 of 3)" in output


def test_rollback_is_requested_for_oncall_and_refused_to_others(api: tuple[str, str, Path]) -> None:
    url, model, database = api
    code, output = _mlcd(url, "dev-token", "rollback", model)
    assert code == 1 and "403" in output and "not on call" in output

    code, output = _mlcd(url, "oncall-token", "rollback", model, "--to-version", "1")
    assert code == 0, output
    assert f"rollback of {model} to version 1 requested" in output

    with sqlite3.connect(database) as db:
        (row,) = db.execute("SELECT value FROM outbox WHERE event_type = ?", (events.RollbackRequested.type,))
    requested = events.RollbackRequested.model_validate_json(row[0])
    assert (requested.model, requested.to_version, requested.requested_by) == (model, "1", "olga")


def test_rollback_to_a_version_the_registry_lacks_is_refused_at_once(api: tuple[str, str, Path]) -> None:
    url, model, database = api
    code, output = _mlcd(url, "oncall-token", "rollback", model, "--to-version", "99")
    assert code == 1 and output == f"error: 404: the registry holds no version '99' of {model}\n"
    code, output = _mlcd(url, "oncall-token", "rollback", "no_such_model")
    assert code == 1 and output.startswith("error: 404: mlcd has no policy for a model named 'no_such_model'")
    code, output = _mlcd(url, "oncall-token", "rollback", f"{model}_t")
    assert code == 1 and output.startswith(f"error: 409: no version of {model}_t earlier than")
    with sqlite3.connect(database) as db:
        assert not db.execute(
            "SELECT 1 FROM outbox WHERE event_type = ?", (events.RollbackRequested.type,)
        ).fetchall()


def test_retrain_is_requested_or_refused_with_the_reason(api: tuple[str, str, Path]) -> None:
    url, model, database = api
    trained = f"{model}_t"
    refusals = [
        (("retrain", trained), 2, "Missing option '--reason'"),
        (("retrain", trained, "--reason", " "), 2, "error: a retrain needs a reason"),
        (("retrain", "no_such_model", "--reason", "r"), 1, "error: 404: mlcd has no policy"),
        (
            ("retrain", model, "--reason", "r"),
            1,
            f"error: 422: the policy of {model} has no training section",
        ),
        (("retrain", trained, "--reason", "r"), 1, f"error: 409: no data batch of {trained} was validated"),
        (("retrain", trained, "--reason", "r", "--data", "batch.csv"), 1, "error: 422: invalid request"),
    ]
    for arguments, exit_code, said in refusals:
        code, output = _mlcd(url, "oncall-token", *arguments)
        assert code == exit_code and said in output, (arguments, output)
    code, output = _mlcd(url, "dev-token", "retrain", trained, "--reason", "r", "--data", "s3://l/b.csv")
    assert code == 1 and "403" in output and "not on call" in output

    code, output = _mlcd(
        url, "oncall-token", "retrain", trained, "--reason", "new labels", "--data", "s3://l/b.csv"
    )
    assert code == 0 and f"retraining of {trained} on s3://l/b.csv requested" in output, output
    with sqlite3.connect(database) as db:
        (row,) = db.execute("SELECT value FROM outbox WHERE event_type = ?", (events.RetrainRequested.type,))
    requested = events.RetrainRequested.model_validate_json(row[0])
    assert (requested.model, requested.data_uri) == (trained, "s3://l/b.csv")
    assert requested.reason == "new labels (requested by olga)"
    assert requested.requested_by == "olga"  # the candidate's author: olga may not approve what she asked for
