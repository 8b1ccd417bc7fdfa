"""`mlcd status` and `mlcd rollback` against the deployer's HTTP API on a real loopback port."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from mlcd import auth, cli, events
from mlcd.adapters.mlflow import MlflowRegistry
from mlcd.deployer import app
from mlcd.policy.book import PolicyBook
from mlcd.store import migrate, rollouts
from mlcd.store.database import create_engine
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
            )
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / f"{model}.yaml").write_text(f"model: {model}\n")
        web = FastAPI()
        web.include_router(
            app.router(engine, None, MlflowRegistry(mlflow_uri), TOKENS.get, PolicyBook(policies))
        )
        yield web
        await engine.dispose()

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
