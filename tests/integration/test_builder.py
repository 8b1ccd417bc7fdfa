"""The builder service against the fake GitLab: commit statuses, MR notes, published pipeline versions."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.adapters import gitlab
from mlcd.builder.handlers import SERVICE
from mlcd.config import Settings
from mlcd.errors import PermanentError, TemporaryError
from mlcd.policy.book import PolicyBook
from mlcd.ports import PipelineRef, Run
from mlcd.store import migrate
from mlcd.store.database import create_engine
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import service_harness

REPO = Path(__file__).resolve().parents[2]
PROJECT = "ml/wine-quality"
GOOD = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
BROKEN = "b2c3d4e5f60718293a4b5c6d7e8f9012345678a1"
FIXED = "c3d4e5f60718293a4b5c6d7e8f9012345678a1b2"
POLICY = """
model: wine_quality
code: {project: ml/wine-quality, paths: ["pipelines/wine_quality/**"], branch: main}
training: {pipeline: wine_quality}
"""
MARKED_DESCRIPTION = "Built from the pushed commit."


class RecordingOrchestrator:
    """Satisfies the Orchestrator port; keeps each published package's YAML by (pipeline, version)."""

    def __init__(self) -> None:
        self.published: dict[tuple[str, str], str] = {}
        self.refusal: str | None = None

    async def publish(self, pipeline: str, version: str, package: Path) -> PipelineRef:
        if self.refusal is not None:
            raise PermanentError(self.refusal)
        self.published.setdefault((pipeline, version), await asyncio.to_thread(package.read_text))
        return PipelineRef(
            pipeline, version, f"pid-{pipeline}", f"vid-{version}", f"recorded://{pipeline}/{version}"
        )

    async def latest(self, pipeline: str) -> PipelineRef | None:
        return None

    async def find_run(self, name: str) -> Run | None:
        return None

    async def submit(self, name: str, pipeline: PipelineRef, parameters: dict[str, Any]) -> Run:
        raise AssertionError("the builder never starts runs")

    async def get_run(self, run_id: str) -> Run:
        raise AssertionError("the builder never reads runs")

    async def ping(self) -> None:
        return None


def _pipeline_sources() -> dict[str, bytes | str]:
    folder = REPO / "pipelines/wine_quality"
    return {f"pipelines/wine_quality/{p.name}": p.read_bytes() for p in folder.glob("*.py")}


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    good = _pipeline_sources()
    pipeline_py = str(good["pipelines/wine_quality/pipeline.py"], "utf-8")
    marked = pipeline_py.replace(
        'description="Train, evaluate and register the wine-quality classifier."',
        f'description="{MARKED_DESCRIPTION}"',
    )
    assert marked != pipeline_py
    broken = pipeline_py.replace(
        "    trained = components.train_model(", "    trained = components.no_such_step("
    )
    with FakeGitLab() as fake:
        fake.add_project(PROJECT, files=good)
        fake.set_files(PROJECT, GOOD, {**good, "pipelines/wine_quality/pipeline.py": marked})
        fake.set_files(PROJECT, BROKEN, {**good, "pipelines/wine_quality/pipeline.py": broken})
        fake.set_files(PROJECT, FIXED, good)
        fake.add_merge_request(PROJECT, 12, sha=BROKEN)
        yield fake


@pytest.fixture
def policies(tmp_path: Path) -> PolicyBook:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "wine_quality.yaml").write_text(POLICY)
    return PolicyBook(folder)


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def ports(fake: FakeGitLab, policies: PolicyBook, tmp_path: Path) -> dict[str, Any]:
    return {
        "settings": Settings(home=tmp_path / "home", api_url="http://mlcd.test"),
        "policies": policies,
        "code_host": gitlab.GitLabCodeHost(fake.url, fake.token, timeout_s=10),
        "orchestrator": RecordingOrchestrator(),
    }


async def deliver(
    engine: AsyncEngine, payload: events.Payload, ports: dict[str, Any]
) -> list[events.Payload]:
    return await service_harness.deliver(engine, SERVICE, payload, ports)


def push(after: str, *, changed: list[str] | None = None, ref: str = "refs/heads/main") -> events.CodePushed:
    return events.CodePushed(
        project=PROJECT,
        project_id=1,
        ref=ref,
        before="0" * 39 + "1",
        after=after,
        author=events.GitUser(username="alice"),
        changed_paths=["pipelines/wine_quality/pipeline.py"] if changed is None else changed,
    )


def merge_request(action: str, commit: str) -> events.MergeRequestChanged:
    return events.MergeRequestChanged(
        project=PROJECT,
        project_id=1,
        iid=12,
        action=action,
        source_branch="tune-forest",
        target_branch="main",
        commit=commit,
        author=events.GitUser(username="alice"),
    )


async def test_push_changing_the_pipeline_publishes_it_with_a_green_status(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(GOOD), ports)

    assert emitted == [
        events.PipelinePublished(
            model="wine_quality",
            pipeline="wine_quality",
            version=GOOD[:8],
            commit=GOOD,
            package_uri=f"recorded://wine_quality/{GOOD[:8]}",
            pipeline_id="pid-wine_quality",
            version_id=f"vid-{GOOD[:8]}",
            author="alice",  # the pusher: the gate of what this pipeline trains keeps them from approving
        )
    ]
    statuses = fake.statuses(PROJECT, GOOD)
    assert [s["status"] for s in statuses] == ["pending", "success"]
    assert statuses[-1]["name"] == "mlcd/pipeline: wine_quality"
    assert statuses[-1]["target_url"] == "http://mlcd.test/api/v1/models/wine_quality"


async def test_published_package_is_compiled_from_the_pushed_commit(
    engine: AsyncEngine, ports: dict[str, Any]
) -> None:
    await deliver(engine, push(GOOD), ports)

    package = ports["orchestrator"].published[("wine_quality", GOOD[:8])]
    assert "# Name: wine-quality" in package
    assert MARKED_DESCRIPTION in package


async def test_pipeline_that_does_not_compile_fails_the_commit_and_publishes_nothing(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(BROKEN), ports)

    assert len(emitted) == 1 and isinstance(emitted[0], events.PipelineBuildFailed)
    assert emitted[0].commit == BROKEN
    assert "pipelines/wine_quality/pipeline.py:" in emitted[0].error
    assert "no_such_step" in emitted[0].error
    assert ports["orchestrator"].published == {}
    statuses = fake.statuses(PROJECT, BROKEN)
    assert [s["status"] for s in statuses] == ["pending", "failed"]
    assert "no_such_step" in statuses[-1]["description"]
    assert statuses[-1]["target_url"].startswith("http://mlcd.test/api/v1/events?model=wine_quality")


async def test_package_the_orchestrator_refuses_fails_the_commit(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    ports["orchestrator"].refusal = "InvalidInputError: pipeline spec is invalid"

    emitted = await deliver(engine, push(GOOD), ports)

    assert len(emitted) == 1 and isinstance(emitted[0], events.PipelineBuildFailed)
    assert "orchestrator refused" in emitted[0].error and "pipeline spec is invalid" in emitted[0].error
    assert [s["status"] for s in fake.statuses(PROJECT, GOOD)] == ["pending", "failed"]


async def test_push_not_touching_the_pipeline_builds_nothing(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(GOOD, changed=["README.md", "docs/index.md"]), ports)

    assert emitted == []
    assert fake.statuses(PROJECT, GOOD) == []


async def test_push_to_another_branch_builds_nothing(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    emitted = await deliver(engine, push(GOOD, ref="refs/heads/experiment"), ports)

    assert emitted == []
    assert fake.statuses(PROJECT, GOOD) == []


async def test_push_with_unknown_paths_is_built_to_be_safe(
    engine: AsyncEngine, ports: dict[str, Any]
) -> None:
    many_commits = push(GOOD, changed=[]).model_copy(update={"paths_complete": False})

    emitted = await deliver(engine, many_commits, ports)

    assert [type(e) for e in emitted] == [events.PipelinePublished]


async def test_merge_request_keeps_one_note_updated_in_place(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    first = await deliver(engine, merge_request("open", BROKEN), ports)
    notes_after_first = fake.notes(PROJECT, 12)
    second = await deliver(engine, merge_request("update", FIXED), ports)

    assert first == [] and second == []
    assert len(notes_after_first) == 1
    assert "does not compile" in notes_after_first[0]["body"]
    assert "no_such_step" in notes_after_first[0]["body"]
    notes = fake.notes(PROJECT, 12)
    assert len(notes) == 1
    assert notes[0]["id"] == notes_after_first[0]["id"]
    assert "✅" in notes[0]["body"] and "compiles" in notes[0]["body"]
    assert [s["status"] for s in fake.statuses(PROJECT, BROKEN)] == ["pending", "failed"]
    assert [s["status"] for s in fake.statuses(PROJECT, FIXED)] == ["pending", "success"]
    assert ports["orchestrator"].published == {}


async def test_merge_request_checks_only_the_models_whose_paths_its_diff_changes(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab, policies: PolicyBook
) -> None:
    (policies.folder / "iris.yaml").write_text(
        POLICY.replace("wine_quality", "iris").replace("model: wine_quality", "model: iris")
    )
    fake.add_merge_request(PROJECT, 13, sha=FIXED, changed_paths=["pipelines/iris/pipeline.py"])
    fake.add_merge_request(PROJECT, 14, sha=FIXED, changed_paths=["README.md"])
    iris_change = merge_request("open", FIXED).model_copy(update={"iid": 13})
    docs_change = merge_request("open", FIXED).model_copy(update={"iid": 14})

    await deliver(engine, iris_change, ports)
    await deliver(engine, docs_change, ports)

    # every model of the project used to be compiled for any merge request: now only iris, whose
    # pipeline the diff changes (its folder is absent at this commit, so its check fails), is checked
    [note] = fake.notes(PROJECT, 13)
    assert "`iris`" in note["body"] and "wine_quality" not in note["body"]
    assert fake.notes(PROJECT, 14) == []
    assert [s["name"] for s in fake.statuses(PROJECT, FIXED)] == ["mlcd/pipeline: iris"] * 2
    assert fake.calls_to("GET", "/merge_requests/13/diffs") and fake.calls_to(
        "GET", "/merge_requests/14/diffs"
    )


async def test_closed_merge_request_is_not_checked(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    await deliver(engine, merge_request("close", FIXED), ports)

    assert fake.notes(PROJECT, 12) == []
    assert fake.statuses(PROJECT, FIXED) == []


async def test_gitlab_outage_is_retried_and_the_retry_publishes_once(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    fake.fail_next(1, status=503)
    with pytest.raises(TemporaryError):
        await deliver(engine, push(GOOD), ports)

    emitted = await deliver(engine, push(GOOD), ports)

    assert [type(e) for e in emitted] == [events.PipelinePublished]
    assert list(ports["orchestrator"].published) == [("wine_quality", GOOD[:8])]
    assert [s["status"] for s in fake.statuses(PROJECT, GOOD)] == ["pending", "success"]


async def test_embedded_default_builds_the_working_tree_into_mlcd_home(
    engine: AsyncEngine, tmp_path: Path, policies: PolicyBook
) -> None:
    from mlcd.adapters import kfp

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines/wine_quality", repo / "pipelines/wine_quality")
    shutil.copytree(policies.folder, repo / "policies")
    settings = Settings(
        home=tmp_path / "home", policies_dir=repo / "policies", pipelines_dir=repo / "pipelines"
    )
    embedded = {
        "settings": settings,
        "policies": PolicyBook(repo / "policies"),
        "code_host": gitlab.build(settings),
        "orchestrator": kfp.build(settings),
    }

    emitted = await deliver(engine, push(GOOD), embedded)

    kept = tmp_path / "home/pipelines/wine_quality" / f"{GOOD[:8]}.yaml"
    assert kept.is_file()
    assert "# Name: wine-quality" in kept.read_text()
    assert [type(e) for e in emitted] == [events.PipelinePublished]


async def test_push_publishes_a_version_on_kubeflow_and_links_it(
    engine: AsyncEngine, ports: dict[str, Any], fake: FakeGitLab
) -> None:
    from mlcd.adapters import kfp
    from tests.fakes import kfp_api

    with kfp_api.serve() as kfp_server:
        settings = ports["settings"].model_copy(update={"kfp_host": kfp_server.url, "kfp_timeout_s": 10.0})
        on_kubeflow = {**ports, "settings": settings, "orchestrator": kfp.build(settings)}

        emitted = await deliver(engine, push(GOOD), on_kubeflow)
        again = await deliver(engine, push(GOOD), on_kubeflow)

    published = emitted[0]
    assert isinstance(published, events.PipelinePublished)
    assert published.version == GOOD[:8] and published.pipeline_id and published.version_id
    assert again == emitted
    assert [v["display_name"] for v in kfp_server.versions.values()].count(GOOD[:8]) == 1
    assert fake.statuses(PROJECT, GOOD)[-1]["target_url"] == (
        f"{kfp_server.url}/#/pipelines/details/{published.pipeline_id}/version/{published.version_id}"
    )
