"""A version's lineage names the upload its run read, when one key was uploaded more than once (no I/O)."""

from __future__ import annotations

from typing import Any

from mlcd import events, lineage

URI = "s3://landing/wine_quality/batch 01.csv"
E1, E2 = "e1" * 16, "e2" * 16


def _journal(*payloads: events.Payload) -> list[dict[str, Any]]:
    return [
        {
            "id": f"evt-{n}",
            "type": p.type,
            "time": f"2026-12-07T09:{n:02d}:00",
            "data": p.model_dump(mode="json"),
        }
        for n, p in enumerate(payloads)
    ]


def _arrived(etag: str) -> events.DataArrived:
    return events.DataArrived(model="m", bucket="landing", key=URI[13:], uri=URI, size=10, etag=etag)


def _started(etag: str) -> events.TrainingStarted:
    return events.TrainingStarted(
        model="m",
        run_id="r1",
        run_name="r1",
        pipeline_version="",
        data_uri=URI,
        trigger_event_id="x",
        data_etag=etag,
    )


VALIDATED = events.DataValidated(model="m", uri=URI, rows=178, suite="s", result_uri="", etag=E1)
REJECTED = events.DataRejected(model="m", uri=URI, reason="the object changed since it arrived", etag=E2)
TRAINED = events.TrainingSucceeded(model="m", run_id="r1", model_version="1", metrics={}, data_uri=URI)


def test_a_pinned_run_names_the_upload_it_read_not_a_later_one_to_the_same_key() -> None:
    journal = _journal(_arrived(E1), VALIDATED, _started(E1), _arrived(E2), REJECTED, TRAINED)

    found = lineage.of_version(journal, "m", "1")

    assert found is not None
    steps = {s.step: s for s in found.steps}
    assert steps["data batch"].id == "evt-0" and f"etag {E1}" in steps["data batch"].summary
    assert steps["validation"].id == "evt-1"
    assert steps["training run"].summary == f"run r1 on {URI} (etag {E1}, as validated)"
    assert found.missing == []


def test_an_unpinned_run_says_it_read_the_object_as_it_was() -> None:
    journal = _journal(_arrived(E1), VALIDATED, _started(""), TRAINED)

    found = lineage.of_version(journal, "m", "1")

    assert found is not None
    [run] = [s for s in found.steps if s.step == "training run"]
    assert run.summary == f"run r1 on {URI} (the object as it was at the run, not pinned)"
