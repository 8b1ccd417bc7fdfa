"""GitLab webhook bodies become the events later stages act on, per model the policy files name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcd import events
from mlcd.ingest import gitlab
from mlcd.ingest.delivery import Unparseable
from mlcd.policy.book import PolicyBook

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
POLICIES = PolicyBook(REPO / "policies")


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(name: str, kind: str, **headers: str) -> list[events.Envelope[events.Payload]]:
    return gitlab.parse(body(name), {"x-gitlab-event": kind, **headers}, POLICIES)


def test_push_touching_a_watched_path_names_the_model_and_every_changed_path() -> None:
    [pushed] = parse("gitlab_push.json", "Push Hook", **{"idempotency-key": "k1"})
    assert isinstance(pushed.data, events.CodePushed)
    assert pushed.data.model == "wine_quality"
    assert pushed.data.ref == "refs/heads/main"
    assert pushed.data.author.username == "ada"
    assert pushed.data.changed_paths == [
        "pipelines/wine_quality/pipeline.py",
        "pipelines/wine_quality/components/train.py",
        "README.md",
    ]
    assert pushed.data.paths_complete and not pushed.data.branch_deleted
    assert pushed.subject == "wine_quality"


def test_push_with_more_commits_than_listed_marks_paths_incomplete_and_concerns_the_model() -> None:
    [pushed] = parse("gitlab_push_23_commits.json", "Push Hook")
    assert isinstance(pushed.data, events.CodePushed)
    assert len(json.loads(body("gitlab_push_23_commits.json"))["commits"]) == 20
    assert pushed.data.paths_complete is False
    assert pushed.data.model == "wine_quality"


def test_push_deleting_the_watched_branch_says_so() -> None:
    [pushed] = parse("gitlab_push_branch_deleted.json", "Push Hook")
    assert isinstance(pushed.data, events.CodePushed)
    assert pushed.data.branch_deleted is True
    assert pushed.data.changed_paths == []


def test_push_touching_no_watched_path_is_journaled_as_ignored() -> None:
    [journal] = parse("gitlab_push_readme_only.json", "Push Hook")
    assert isinstance(journal.data, events.DeliveryIgnored)
    assert journal.data.kind == "Push Hook"
    assert "ml/wine-quality@main" in journal.data.reason
    assert journal.subject == "ml/wine-quality"


def test_tag_push_yields_the_tag_and_its_commit() -> None:
    [tagged] = parse("gitlab_tag_push.json", "Tag Push Hook")
    assert isinstance(tagged.data, events.TagPushed)
    assert (tagged.data.tag, tagged.data.commit) == ("v1.4.0", "9".zfill(40))


def test_merge_request_into_the_watched_branch_concerns_the_model() -> None:
    [changed] = parse("gitlab_merge_request.json", "Merge Request Hook")
    assert isinstance(changed.data, events.MergeRequestChanged)
    assert (changed.data.iid, changed.data.action, changed.data.model) == (7, "open", "wine_quality")
    assert changed.data.source_branch == "feature/deeper-trees"
    assert changed.data.commit == f"{21:040x}"


def test_merge_request_approval_names_the_approver_and_an_unknown_diff() -> None:
    raw = json.loads(body("gitlab_merge_request.json"))
    raw["user"]["username"] = "rita"  # GitLab's `user` on an approval: who approved
    raw["object_attributes"]["action"] = "approved"
    [approved] = gitlab.parse(json.dumps(raw).encode(), {"x-gitlab-event": "Merge Request Hook"}, POLICIES)
    assert isinstance(approved.data, events.MergeRequestChanged)
    assert (approved.data.action, approved.data.author.username, approved.data.iid) == ("approved", "rita", 7)
    assert (approved.data.changed_paths, approved.data.paths_complete) == ([], False)


def test_approve_comment_on_a_merge_request_requests_the_gate_decision_as_its_author() -> None:
    [decision] = parse("gitlab_note_mr_approve.json", "Note Hook")
    assert isinstance(decision.data, events.GateDecisionRequested)
    assert decision.data.model_dump() == {
        "model": None,
        "gate_id": "g-42",
        "decision": "approve",
        "actor": "oncall-olga",
        "via": "gitlab",
        "reason": "",
        "project": "ml/wine-quality",
        "merge_request_iid": 7,
    }


def test_reject_comment_carries_its_reason() -> None:
    [decision] = parse("gitlab_note_mr_reject.json", "Note Hook")
    assert isinstance(decision.data, events.GateDecisionRequested)
    assert (decision.data.decision, decision.data.reason) == ("reject", "recall dropped on the red wines")


@pytest.mark.parametrize("fixture", ["gitlab_note_issue.json", "gitlab_note_mr_chatter.json"])
def test_notes_on_issues_and_ordinary_comments_are_ignored(fixture: str) -> None:
    [journal] = parse(fixture, "Note Hook")
    assert isinstance(journal.data, events.DeliveryIgnored)


def test_pipeline_hook_is_recorded_for_the_timeline() -> None:
    [finished] = parse("gitlab_pipeline.json", "Pipeline Hook")
    assert isinstance(finished.data, events.GitPipelineFinished)
    assert (finished.data.pipeline_id, finished.data.status) == (31, "success")


def test_kinds_mlcd_does_not_act_on_are_ignored() -> None:
    [journal] = gitlab.parse(b'{"object_kind": "wiki_page"}', {"x-gitlab-event": "Wiki Page Hook"}, POLICIES)
    assert isinstance(journal.data, events.DeliveryIgnored)
    assert journal.data.kind == "Wiki Page Hook"


def test_kind_falls_back_to_object_kind_without_the_header() -> None:
    [pushed] = gitlab.parse(body("gitlab_push.json"), {}, POLICIES)
    assert isinstance(pushed.data, events.CodePushed)


def test_redelivery_with_the_same_idempotency_key_has_the_same_event_id() -> None:
    first = parse("gitlab_push.json", "Push Hook", **{"idempotency-key": "k1", "x-gitlab-event-uuid": "u1"})
    retry = parse("gitlab_push.json", "Push Hook", **{"idempotency-key": "k1", "x-gitlab-event-uuid": "u2"})
    other = parse("gitlab_push.json", "Push Hook", **{"idempotency-key": "k2", "x-gitlab-event-uuid": "u1"})
    assert first[0].id == retry[0].id != other[0].id


def test_event_uuid_identifies_the_delivery_when_there_is_no_idempotency_key() -> None:
    first = parse("gitlab_push.json", "Push Hook", **{"x-gitlab-event-uuid": "u1"})
    again = parse("gitlab_push.json", "Push Hook", **{"x-gitlab-event-uuid": "u1"})
    assert first[0].id == again[0].id


@pytest.mark.parametrize(
    ("raw", "kind", "problem"),
    [
        (b"{not json", "Push Hook", "not JSON"),
        (b"[1, 2]", "Push Hook", "expected an object"),
        (b'{"ref": "refs/heads/main"}', "Push Hook", "project"),
        (b'{"object_kind": "mystery"}', "", "X-Gitlab-Event"),
    ],
)
def test_bodies_gitlab_would_not_send_are_unparseable_with_a_reason(
    raw: bytes, kind: str, problem: str
) -> None:
    headers = {"x-gitlab-event": kind} if kind else {}
    with pytest.raises(Unparseable, match=problem):
        gitlab.parse(raw, headers, POLICIES)
