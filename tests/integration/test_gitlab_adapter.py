"""The GitLab CodeHost adapter (python-gitlab) against the fake GitLab REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcd.adapters import gitlab
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound, PermanentError, TemporaryError
from tests.fakes.gitlab_api import FakeGitLab
from tests.support import processes

PROJECT = "ml/wine-quality"
SHA = "3f2a9c0d5e6b7a8c9d0e1f2a3b4c5d6e7f8a9b0c"


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    with FakeGitLab() as fake:
        fake.add_project(
            PROJECT,
            files={
                "README.md": "# wine",
                "pipelines/wine_quality/pipeline.py": "PIPELINE = 'at main'\n",
                "pipelines/wine_quality/steps/train.py": "def train(): ...\n",
                "pipelines/other/pipeline.py": "x = 1\n",
            },
        )
        fake.add_merge_request(PROJECT, 7, sha=SHA)
        yield fake


@pytest.fixture
def host(fake: FakeGitLab) -> gitlab.GitLabCodeHost:
    return gitlab.GitLabCodeHost(fake.url, fake.token, timeout_s=5)


async def test_commit_status_goes_pending_then_success_with_link(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    await host.set_commit_status(PROJECT, SHA, "pending", name="mlcd/build", description="compiling")
    await host.set_commit_status(
        PROJECT, SHA, "success", name="mlcd/build", description="published", target_url="http://kfp/p/1"
    )

    statuses = fake.statuses(PROJECT, SHA)
    assert [s["status"] for s in statuses] == ["pending", "success"]
    assert statuses[-1]["target_url"] == "http://kfp/p/1"
    assert statuses[-1]["name"] == "mlcd/build"


async def test_repeated_pending_status_is_accepted_as_already_set(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    await host.set_commit_status(PROJECT, SHA, "pending", name="mlcd/build")
    await host.set_commit_status(PROJECT, SHA, "pending", name="mlcd/build")

    assert [s["status"] for s in fake.statuses(PROJECT, SHA)] == ["pending"]


async def test_statuses_posted_again_after_a_crash_are_not_doubled(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    for _ in range(2):  # the builder killed after GitLab took the success status, then redelivered
        await host.set_commit_status(PROJECT, SHA, "pending", name="mlcd/build", description="compiling")
        await host.set_commit_status(PROJECT, SHA, "success", name="mlcd/build", description="published")

    assert [s["status"] for s in fake.statuses(PROJECT, SHA)] == ["pending", "success"]


async def test_merge_request_note_is_edited_in_place_on_later_runs(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    await host.upsert_merge_request_note(PROJECT, 7, "mlcd:builder:wine_quality", "Compile failed")
    await host.upsert_merge_request_note(PROJECT, 7, "mlcd:builder:other", "Other model compiled")
    await host.upsert_merge_request_note(PROJECT, 7, "mlcd:builder:wine_quality", "Compiled fine")

    notes = fake.notes(PROJECT, 7)
    assert len(notes) == 2
    assert notes[0]["body"].startswith("Compiled fine")
    assert "<!-- mlcd:builder:wine_quality -->" in notes[0]["body"]
    assert len(fake.calls_to("PUT", "/notes/" + str(notes[0]["id"]))) == 1


async def test_unchanged_note_is_not_rewritten(host: gitlab.GitLabCodeHost, fake: FakeGitLab) -> None:
    await host.upsert_merge_request_note(PROJECT, 7, "m", "same text")
    await host.upsert_merge_request_note(PROJECT, 7, "m", "same text")

    assert len(fake.notes(PROJECT, 7)) == 1
    assert fake.calls_to("PUT", str(fake.notes(PROJECT, 7)[0]["id"])) == []


async def test_note_on_unknown_merge_request_is_not_found(host: gitlab.GitLabCodeHost) -> None:
    with pytest.raises(NotFound):
        await host.upsert_merge_request_note(PROJECT, 99, "m", "text")


async def test_commit_note_lands_on_the_commit_once(host: gitlab.GitLabCodeHost, fake: FakeGitLab) -> None:
    for _ in range(2):  # a redelivered handler posts again
        await host.post_commit_note(PROJECT, SHA, "gate g1 opened", "Gate g1 is open")
    await host.post_commit_note(PROJECT, SHA, "gate g1 approved", "Gate g1 approved")

    assert [c["note"] for c in fake.commit_comments(PROJECT, SHA)] == [
        "Gate g1 is open\n\n<!-- gate g1 opened -->",
        "Gate g1 approved\n\n<!-- gate g1 approved -->",
    ]


async def test_tree_is_fetched_at_the_pushed_commit(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab, tmp_path: Path
) -> None:
    fake.set_files(PROJECT, SHA, {"pipelines/wine_quality/pipeline.py": "PIPELINE = 'at the commit'\n"})

    folder = await host.fetch_tree(PROJECT, SHA, "pipelines/wine_quality", tmp_path)

    assert folder == tmp_path / "pipelines/wine_quality"
    assert (folder / "pipeline.py").read_text() == "PIPELINE = 'at the commit'\n"
    assert not (folder / "steps").exists()


async def test_tree_keeps_nested_files_and_only_the_asked_folder(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab, tmp_path: Path
) -> None:
    folder = await host.fetch_tree(PROJECT, "main", "pipelines/wine_quality", tmp_path)

    assert _files_under(tmp_path) == [
        "pipelines/wine_quality/pipeline.py",
        "pipelines/wine_quality/steps/train.py",
    ]
    assert (folder / "steps/train.py").read_text() == "def train(): ...\n"


async def test_tree_of_a_missing_folder_is_not_found(host: gitlab.GitLabCodeHost, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await host.fetch_tree(PROJECT, "main", "pipelines/nope", tmp_path)


async def test_tree_paths_leaving_the_repository_are_refused(
    host: gitlab.GitLabCodeHost, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError):
        await host.fetch_tree(PROJECT, "main", "../etc", tmp_path)


async def test_tree_listing_follows_pagination(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab, tmp_path: Path
) -> None:
    many = {f"pipelines/big/f{i:03}.py": f"n = {i}\n" for i in range(130)}
    fake.set_files(PROJECT, "big", many)

    folder = await host.fetch_tree(PROJECT, "big", "pipelines/big", tmp_path)

    assert len(list(folder.iterdir())) == 130


async def test_access_level_reads_inherited_membership(host: gitlab.GitLabCodeHost, fake: FakeGitLab) -> None:
    fake.add_member(PROJECT, "alice", 40)
    fake.add_user("bob")

    assert await host.access_level(PROJECT, "alice") == 40
    assert await host.access_level(PROJECT, "bob") == 0
    assert await host.access_level(PROJECT, "nobody-at-all") == 0
    assert any("/members/all/" in c.path for c in fake.calls)


async def test_merge_requests_of_a_commit_name_the_merged_one_first(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    merge_commit = "9" * 40
    fake.add_merge_request(
        PROJECT, 8, sha="8" * 40, author="mara", state="merged", merge_commit_sha=merge_commit
    )
    fake.add_merge_request(PROJECT, 9, sha=merge_commit, author="tom")

    found = await host.merge_requests_of_commit(PROJECT, merge_commit)
    none = await host.merge_requests_of_commit(PROJECT, "1" * 40)

    assert [(m.iid, m.author, m.state) for m in found] == [(8, "mara", "merged"), (9, "tom", "opened")]
    assert found[0].url == f"{fake.url}/{PROJECT}/-/merge_requests/8"
    assert none == []
    assert fake.calls_to("GET", f"/projects/{PROJECT}/repository/commits/{merge_commit}/merge_requests")


async def test_merge_request_paths_follow_the_paginated_diffs(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    many = [f"data/file_{n:03}.csv" for n in range(130)] + ["pipelines/wine_quality/pipeline.py"]
    fake.add_merge_request(PROJECT, 10, sha="a" * 40, changed_paths=many)

    paths = await host.merge_request_paths(PROJECT, 10)

    assert paths == many
    assert len(fake.calls_to("GET", "/merge_requests/10/diffs")) == 2  # 100 a page


async def test_merge_request_approvers_are_read_from_its_approvals(
    host: gitlab.GitLabCodeHost, fake: FakeGitLab
) -> None:
    assert await host.merge_request_approvers(PROJECT, 7) == []
    fake.approve_merge_request(PROJECT, 7, "rita")
    fake.approve_merge_request(PROJECT, 7, "sam")

    assert await host.merge_request_approvers(PROJECT, 7) == ["rita", "sam"]
    with pytest.raises(NotFound):
        await host.merge_request_approvers(PROJECT, 404)


async def test_ping_checks_the_token(fake: FakeGitLab) -> None:
    await gitlab.GitLabCodeHost(fake.url, fake.token).ping()

    with pytest.raises(PermanentError, match="401"):
        await gitlab.GitLabCodeHost(fake.url, "wrong-token").ping()


async def test_gitlab_server_errors_are_temporary(host: gitlab.GitLabCodeHost, fake: FakeGitLab) -> None:
    fake.fail_next(1, status=502)

    with pytest.raises(TemporaryError):
        await host.set_commit_status(PROJECT, SHA, "pending", name="mlcd/build")


async def test_unreachable_gitlab_is_an_outage() -> None:
    host = gitlab.GitLabCodeHost(f"http://127.0.0.1:{processes.free_port()}", "t", timeout_s=2)

    with pytest.raises(AdapterUnavailable):
        await host.ping()


async def test_without_gitlab_the_working_tree_is_copied(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pipelines/wine_quality").mkdir(parents=True)
    (repo / "pipelines/wine_quality/pipeline.py").write_text("x = 1\n")
    (repo / "policies").mkdir()
    host = gitlab.build(Settings(policies_dir=repo / "policies", pipelines_dir=repo / "pipelines"))

    folder = await host.fetch_tree(PROJECT, "main", "pipelines/wine_quality", tmp_path / "out")
    await host.set_commit_status(PROJECT, SHA, "success", name="mlcd/build")

    assert (folder / "pipeline.py").read_text() == "x = 1\n"
    assert await host.access_level(PROJECT, "alice") == 0


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_settings_with_a_gitlab_url_choose_gitlab() -> None:
    host = gitlab.build(Settings(gitlab_url="https://gitlab.example.com", gitlab_token="t"))

    assert isinstance(host, gitlab.GitLabCodeHost)
