"""Feast feature repositories through the builder: real Feast (local provider) from its own virtualenv, the
repository fetched from the fake GitLab. A merge request gets `feast plan` as a note and a commit status; a
push to the policy's branch runs `feast apply` and emits FeaturesApplied."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import feast, gitlab
from mlcd.builder.handlers import SERVICE
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.store import migrate
from mlcd.store.database import create_engine
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import service_harness

REPO = Path(__file__).resolve().parents[2]
FEAST_BIN = REPO / ".venv-feast/bin/feast"
RELATIVE_FEAST_BIN = Path(os.path.relpath(FEAST_BIN))
PROJECT = "ml/wine-quality"
FIRST = "f1f2f3f4f5f60718293a4b5c6d7e8f9012345678"
SECOND = "e1e2e3e4e5f60718293a4b5c6d7e8f9012345678"
BROKEN = "d1d2d3d4e5f60718293a4b5c6d7e8f9012345678"
DEFINITIONS = "features/wine_quality/wine_features.py"
POLICY = """
model: wine_quality
code: {project: ml/wine-quality, paths: ["pipelines/wine_quality/**"], branch: main}
features: {path: features/wine_quality, retrain: true}
"""

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not FEAST_BIN.exists(), reason="no .venv-feast: run `make feast-venv`"),
]


def _feature_repo() -> dict[str, str]:
    folder = REPO / "features/wine_quality"
    return {f"features/wine_quality/{p.name}": p.read_text() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def measurements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The offline store's Parquet file, where the shipped definitions read WINE_FEATURES_URI; and a
    secret in mlcd's environment, which Feast's child process must not inherit."""
    monkeypatch.setenv("MLCD_GITLAB_TOKEN", "glpat-must-not-leak")
    frame = load_wine(as_frame=True).frame.drop(columns="target")
    frame.insert(0, "wine_id", range(len(frame)))
    frame["event_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC")
    path = tmp_path / "wine_features.parquet"
    frame.to_parquet(path)
    monkeypatch.setenv("WINE_FEATURES_URI", str(path))
    return path


@pytest.fixture
def fake(measurements: Path) -> Iterator[FakeGitLab]:
    shipped = _feature_repo()
    fewer = shipped[DEFINITIONS].replace(
        "schema=[Field(name=name, dtype=Float64) for name in MEASUREMENTS]",
        "schema=[Field(name=name, dtype=Float64) for name in MEASUREMENTS if name != 'ash']",
    )
    # Fails as user code may, and says which of mlcd's settings (its tokens among them) it could read.
    broken = shipped[DEFINITIONS].replace(
        "wine = Entity(",
        'seen = ",".join(k for k in os.environ if k.startswith("MLCD_"))\n'
        'raise RuntimeError("MLCD settings seen: " + (seen or "none"))\nwine = Entity(',
    )
    assert fewer != shipped[DEFINITIONS] and broken != shipped[DEFINITIONS]
    with FakeGitLab() as fake:
        fake.add_project(PROJECT, files={"README.md": "wine"})
        fake.set_files(PROJECT, FIRST, {"README.md": "wine", **shipped})
        fake.set_files(PROJECT, SECOND, {"README.md": "wine", **shipped, DEFINITIONS: fewer})
        fake.set_files(PROJECT, BROKEN, {"README.md": "wine", **shipped, DEFINITIONS: broken})
        yield fake


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def ports(fake: FakeGitLab, tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / f"policies-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "wine_quality.yaml").write_text(POLICY)
    return {
        "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test", feast_bin=FEAST_BIN),
        "policies": PolicyBook(folder),
        "code_host": gitlab.GitLabCodeHost(fake.url, fake.token, timeout_s=10),
        "orchestrator": None,  # a push touching only features/ publishes no pipeline
    }


def push(after: str, changed: list[str]) -> events.CodePushed:
    return events.CodePushed(
        project=PROJECT,
        project_id=1,
        ref="refs/heads/main",
        before="0" * 39 + "1",
        after=after,
        author=events.GitUser(username="alice"),
        changed_paths=changed,
    )


def merge_request(commit: str, iid: int) -> events.MergeRequestChanged:
    return events.MergeRequestChanged(
        project=PROJECT,
        project_id=1,
        iid=iid,
        action="open",
        source_branch="features",
        target_branch="main",
        commit=commit,
        author=events.GitUser(username="bob"),
    )


async def deliver(
    engine: AsyncEngine, payload: events.Payload, ports: dict[str, Any]
) -> list[events.Payload]:
    return await service_harness.deliver(engine, SERVICE, payload, ports)


async def test_a_push_applies_the_feature_repository_and_a_later_merge_request_plans_against_it(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab, tmp_path: Path
) -> None:
    fake.add_merge_request(PROJECT, 7, sha=SECOND)  # its diff, asked of GitLab: the definitions file

    emitted = await deliver(engine, push(FIRST, [DEFINITIONS]), ports)
    planned = await deliver(engine, merge_request(SECOND, 7), ports)

    registry = tmp_path / "home/feast/wine_quality/registry.db"
    assert emitted == [
        events.FeaturesApplied(
            model="wine_quality",
            project=PROJECT,
            commit=FIRST,
            path="features/wine_quality",
            feast_project="wine_quality",
            registry=str(registry),
            changes=[
                "Created project wine_quality",
                "Created entity wine",
                "Created feature view wine_chemistry",
                "Created feature service wine_quality_training",
                "Created sqlite table wine_quality_wine_chemistry",
            ],
            author="alice",
        )
    ]
    assert registry.is_file() and (tmp_path / "home/feast/wine_quality/online.db").is_file()
    applied = fake.statuses(PROJECT, FIRST)
    assert [(s["name"], s["status"]) for s in applied] == [
        ("mlcd/features: wine_quality", "pending"),
        ("mlcd/features: wine_quality", "success"),
    ]
    assert "Created feature view wine_chemistry" in applied[-1]["description"]
    # The merge request's plan is against what the push applied: one feature fewer, nothing created.
    assert planned == []
    (note,) = fake.notes(PROJECT, 7)
    assert "feast plan" in note["body"] and "Updated feature view wine_chemistry" in note["body"]
    assert 'name: "ash"' in note["body"] and "Created feature view" not in note["body"]
    assert [s["status"] for s in fake.statuses(PROJECT, SECOND)] == ["pending", "success"]


async def test_a_merge_request_whose_definitions_break_gets_feasts_error_and_a_failed_status(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab, tmp_path: Path
) -> None:
    fake.add_merge_request(PROJECT, 8, sha=BROKEN)
    # MLCD_FEAST_BIN relative to where mlcd runs, as its default (.venv-feast/bin/feast) is.
    ports["settings"] = ports["settings"].model_copy(update={"feast_bin": RELATIVE_FEAST_BIN})

    emitted = await deliver(engine, merge_request(BROKEN, 8), ports)

    assert emitted == []
    statuses = fake.statuses(PROJECT, BROKEN)
    assert [s["status"] for s in statuses] == ["pending", "failed"]
    assert "wine_features.py:" in statuses[-1]["description"]
    assert "RuntimeError: MLCD settings seen: none" in statuses[-1]["description"]
    (note,) = fake.notes(PROJECT, 8)
    assert "does not plan" in note["body"] and "MLCD settings seen: none" in note["body"]


async def test_a_push_that_breaks_the_definitions_applies_nothing_and_raises_a_notice(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(BROKEN, [DEFINITIONS]), ports)

    assert len(emitted) == 1 and isinstance(emitted[0], events.NoticeRaised)
    assert "feast apply of features/wine_quality" in emitted[0].message
    assert "RuntimeError: MLCD settings seen: none" in emitted[0].message
    assert [s["status"] for s in fake.statuses(PROJECT, BROKEN)] == ["pending", "failed"]


async def test_a_push_not_touching_the_feature_repository_runs_no_feast(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(FIRST, ["README.md"]), ports)

    assert emitted == []
    assert fake.statuses(PROJECT, FIRST) == []


def test_a_relative_registry_moves_under_the_state_folder_and_a_policys_registry_wins(tmp_path: Path) -> None:
    repo_config = {"project": "p", "provider": "local", "registry": "data/registry.db"}

    moved = feast.effective_config(repo_config, None, tmp_path)
    named = feast.effective_config(repo_config, "postgresql+psycopg://feast:s3cret@db:5432/feast", tmp_path)
    kept = feast.effective_config({**repo_config, "registry": "s3://bucket/registry.pb"}, None, tmp_path)

    assert moved["registry"] == str(tmp_path / "registry.db")
    assert moved["online_store"] == {"type": "sqlite", "path": str(tmp_path / "online.db")}
    assert named["registry"]["registry_type"] == "sql"
    assert feast.registry_label(named) == "postgresql+psycopg://feast@db:5432/feast"
    assert kept["registry"] == "s3://bucket/registry.pb"
