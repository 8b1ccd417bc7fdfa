"""Which pushes and merge requests the builder acts on, and what it writes back (no I/O)."""

from __future__ import annotations

from mlcd import events
from mlcd.builder import reports, triggers
from mlcd.config import Settings
from mlcd.policy.schema import Policy
from mlcd.ports import PipelineRef

WINE = Policy.model_validate(
    {
        "model": "wine_quality",
        "code": {"project": "ml/wine", "paths": ["pipelines/wine_quality/**"], "branch": "main"},
        "training": {"pipeline": "wine_quality"},
    }
)
IRIS = Policy.model_validate(
    {
        "model": "iris",
        "code": {"project": "ml/wine", "paths": ["pipelines/iris/**"], "branch": "main"},
        "training": {"pipeline": "iris"},
    }
)
NO_TRAINING = Policy.model_validate({"model": "scored", "code": {"project": "ml/wine"}})
SHA = "0123456789abcdef0123456789abcdef01234567"


def push(changed: list[str], **update: object) -> events.CodePushed:
    base = events.CodePushed(
        project="ml/wine",
        project_id=1,
        ref="refs/heads/main",
        before="f" * 40,
        after=SHA,
        author=events.GitUser(username="alice"),
        changed_paths=changed,
    )
    return base.model_copy(update=update)


def merge_request(action: str, changed: list[str] | None = None) -> events.MergeRequestChanged:
    return events.MergeRequestChanged(
        project="ml/wine",
        project_id=1,
        iid=3,
        action=action,
        source_branch="x",
        target_branch="main",
        commit=SHA,
        author=events.GitUser(username="alice"),
        changed_paths=changed or [],
    )


def test_push_rebuilds_only_the_models_whose_pipeline_changed() -> None:
    chosen = triggers.models_to_publish(push(["pipelines/iris/pipeline.py"]), [WINE, IRIS, NO_TRAINING])

    assert [p.model for p in chosen] == ["iris"]


def test_push_with_incomplete_paths_rebuilds_every_model_of_the_project() -> None:
    chosen = triggers.models_to_publish(push([], paths_complete=False), [WINE, IRIS, NO_TRAINING])

    assert [p.model for p in chosen] == ["wine_quality", "iris"]


def test_push_naming_a_model_rebuilds_only_that_model() -> None:
    chosen = triggers.models_to_publish(push([], paths_complete=False, model="iris"), [WINE, IRIS])

    assert [p.model for p in chosen] == ["iris"]


def test_deleted_branch_and_other_branches_rebuild_nothing() -> None:
    changed = ["pipelines/wine_quality/pipeline.py"]

    assert triggers.models_to_publish(push(changed, branch_deleted=True, after="0" * 40), [WINE]) == []
    assert triggers.models_to_publish(push(changed, ref="refs/heads/dev"), [WINE]) == []


def test_merge_request_without_paths_checks_every_model_and_closing_checks_none() -> None:
    assert [p.model for p in triggers.models_to_check(merge_request("open"), [WINE, IRIS])] == [
        "wine_quality",
        "iris",
    ]
    assert triggers.models_to_check(merge_request("update", ["pipelines/iris/a.py"]), [WINE]) == []
    assert triggers.models_to_check(merge_request("merge"), [WINE, IRIS]) == []


def test_merge_request_whose_whole_diff_is_known_checks_only_the_models_it_changes() -> None:
    iris_only = merge_request("open", ["pipelines/iris/pipeline.py", "README.md"])
    docs_only = merge_request("update").model_copy(update={"changed_paths": ["README.md"]})
    empty_diff = merge_request("update").model_copy(update={"paths_complete": True})

    assert [p.model for p in triggers.models_to_check(iris_only, [WINE, IRIS])] == ["iris"]
    assert triggers.models_to_check(docs_only, [WINE, IRIS]) == []
    assert triggers.models_to_check(empty_diff, [WINE, IRIS]) == []


def test_version_is_the_short_commit_and_folder_is_under_pipelines() -> None:
    assert triggers.short_commit(SHA) == "01234567"
    assert triggers.pipeline_folder(WINE) == "pipelines/wine_quality"


def test_note_quotes_the_compile_error_even_when_it_holds_backticks() -> None:
    note = reports.merge_request_note(
        "wine_quality", "wine_quality", SHA, "pipeline.py:3: bad ```fence``` here"
    )

    assert "does not compile" in note
    assert "````text\npipeline.py:3: bad ```fence``` here\n````" in note


def test_note_for_a_compiling_pipeline_names_the_commit() -> None:
    note = reports.merge_request_note("wine_quality", "wine_quality", SHA, None)

    assert "compiles" in note and "01234567" in note


def test_links_point_to_kubeflow_when_configured_else_to_mlcd() -> None:
    ref = PipelineRef("wine_quality", "01234567", "p-1", "v-9")

    kfp_link = reports.published_link(Settings(kfp_host="http://kfp.example/"), "wine_quality", ref)
    local_link = reports.published_link(Settings(api_url="http://mlcd.example"), "wine_quality", ref)

    assert kfp_link == "http://kfp.example/#/pipelines/details/p-1/version/v-9"
    assert local_link == "http://mlcd.example/api/v1/models/wine_quality"
    assert reports.failure_link(Settings(api_url="http://m"), "wine_quality") == (
        "http://m/api/v1/events?model=wine_quality&type=mlcd.training.pipeline_build_failed.v1"
    )


def test_status_description_is_one_short_line() -> None:
    text = reports.one_line("line one\n  line two " + "x" * 300)

    assert "\n" not in text and len(text) == 140 and text.endswith("…")
