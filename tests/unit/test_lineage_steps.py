"""Which run of which step an event begins, moves or ends (mlcd.lineage_export.steps), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlcd import events
from mlcd.lineage_export import steps

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def _event(payload: events.Payload, id: str, minute: int) -> events.Envelope[Any]:
    return events.new_event(payload, source="mlcd/test", id=id, time=T0 + timedelta(minutes=minute))


def test_a_rollback_during_a_rollout_fails_that_rollout_and_is_a_run_of_its_own() -> None:
    started = _event(events.RolloutStarted(model="m", model_version="7", steps=[10, 100]), "r1", 0)
    back = _event(
        events.RolledBack(model="m", from_version="7", to_version="6", reason="success-rate"), "b1", 5
    )

    made = steps.of_event(back, {"rollout": started.structured(), "succeeded": None, "rolled_back": None})

    assert [(s.job, s.state, s.run_key) for s in made] == [
        ("rollout", "FAIL", "r1"),
        ("rollback", "START", "b1"),
        ("rollback", "COMPLETE", "b1"),
    ]
    assert made[0].error == "success-rate"
    assert [d.name for d in made[1].inputs] == ["models:/m/7"] and [d.name for d in made[1].outputs] == [
        "models:/m/6"
    ]


def test_a_rollback_after_the_rollout_ended_leaves_that_rollout_complete() -> None:
    started = _event(events.RolloutStarted(model="m", model_version="7", steps=[100]), "r1", 0)
    done = _event(events.RolloutSucceeded(model="m", model_version="7"), "s1", 3)
    back = _event(events.RolledBack(model="m", from_version="7", to_version="6", reason="drift"), "b1", 9)

    made = steps.of_event(back, {"rollout": started.structured(), "succeeded": done.structured()})

    assert [(s.job, s.state) for s in made] == [("rollback", "START"), ("rollback", "COMPLETE")]


def test_a_promotion_without_a_gate_begins_and_ends_its_gate_run() -> None:
    approved = _event(events.PromotionApproved(model="m", model_version="7", approved_by=[]), "p1", 0)

    made = steps.of_event(approved, {})

    assert [(s.job, s.state, s.run_key) for s in made] == [
        ("gate", "START", "p1"),
        ("gate", "COMPLETE", "p1"),
    ]


def test_an_end_without_its_beginning_is_unlinked() -> None:
    done = _event(
        events.TrainingSucceeded(model="m", run_id="r", model_version="7", metrics={}, data_uri="s3://b/k"),
        "t2",
        1,
    )

    with pytest.raises(steps.Unlinked, match="no started event"):
        steps.of_event(done, {"started": None})


def test_the_batch_is_named_as_openlineage_names_objects_and_pinned_to_its_version() -> None:
    arrived = {"size": 10, "etag": "e1", "version_id": "v3", "author": "uploader"}

    batch = steps.batch("s3://landing/wine_quality/batch 01.csv", arrived)

    assert (batch.namespace, batch.name, batch.version) == ("s3://landing", "wine_quality/batch 01.csv", "v3")
    assert steps.batch("s3://landing/k.csv", {"etag": "e1"}).version == "e1"


def test_a_run_that_names_no_batch_reads_none() -> None:
    started = _event(
        events.TrainingStarted(
            model="m", run_id="r", run_name="n", pipeline_version="p", data_uri="", trigger_event_id="x"
        ),
        "t1",
        0,
    )

    (step,) = steps.of_event(started, {"arrived": None})

    assert step.inputs == ()
