"""The event contract: Kafka binary-mode round trip, every decode failure, deterministic ids, keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from mlcd import events


def _validated(model: str = "wine_quality") -> events.Envelope[events.DataValidated]:
    return events.new_event(
        events.DataValidated(
            model=model,
            uri="s3://landing/wine/batch1.csv",
            rows=100,
            suite="wine",
            result_uri="s3://r/1.json",
        ),
        source="mlcd/validator",
        id="evt-1",
        time=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
    )


def _without(record: events.Record, name: str) -> events.Record:
    return replace(record, headers=tuple((k, v) for k, v in record.headers if k != name))


def _with(record: events.Record, name: str, value: bytes) -> events.Record:
    return replace(record, headers=(*((k, v) for k, v in record.headers if k != name), (name, value)))


def test_encoded_event_decodes_to_the_same_envelope() -> None:
    envelope = _validated()
    decoded = events.decode(events.encode(envelope))
    assert decoded == envelope


def test_encoding_uses_binary_mode_headers_and_the_payload_as_value() -> None:
    record = events.encode(_validated())
    assert record.topic == "mlcd.data"
    assert record.header("ce_specversion") == "1.0"
    assert record.header("ce_id") == "evt-1"
    assert record.header("ce_source") == "mlcd/validator"
    assert record.header("ce_type") == "mlcd.data.validated.v1"
    assert record.header("ce_subject") == "wine_quality"
    assert record.header("content-type") == "application/json"
    assert b'"rows":100' in record.value


def test_record_key_is_the_model() -> None:
    assert events.encode(_validated("churn")).key == b"churn"


def test_git_event_without_a_model_is_keyed_by_its_subject() -> None:
    pushed = events.CodePushed(
        project="ml/wine",
        project_id=7,
        ref="refs/heads/main",
        before="0" * 40,
        after="a" * 40,
        author=events.GitUser(username="ana"),
    )
    envelope = events.new_event(pushed, source="mlcd/ingest", subject="ml/wine")
    assert events.encode(envelope).key == b"ml/wine"
    assert events.decode(events.encode(envelope)) == envelope


@pytest.mark.parametrize("header", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"])
def test_record_missing_a_required_header_names_it(header: str) -> None:
    decoded = events.decode(_without(events.encode(_validated()), header))
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason == f"missing CloudEvents headers: {header}"


def test_record_without_any_headers_lists_every_missing_one() -> None:
    decoded = events.decode(events.Record(topic="mlcd.data", value=b"{}"))
    assert isinstance(decoded, events.DecodeError)
    assert "ce_specversion, ce_id, ce_source, ce_type, ce_time" in decoded.reason


def test_record_of_another_specversion_is_refused() -> None:
    decoded = events.decode(_with(events.encode(_validated()), "ce_specversion", b"0.3"))
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason == "unsupported specversion '0.3'"


def test_record_of_an_unknown_type_is_refused() -> None:
    decoded = events.decode(_with(events.encode(_validated()), "ce_type", b"mlcd.data.teleported.v1"))
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason == "unknown event type 'mlcd.data.teleported.v1'"


def test_payload_missing_a_field_names_the_field() -> None:
    record = replace(events.encode(_validated()), value=b'{"model": "wine_quality", "uri": "s3://x"}')
    decoded = events.decode(record)
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason.startswith("invalid mlcd.data.validated.v1 payload:")
    assert "rows: Field required" in decoded.reason


def test_payload_that_is_not_json_is_refused() -> None:
    decoded = events.decode(replace(events.encode(_validated()), value=b"\x00\xffnot json"))
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason.startswith("invalid mlcd.data.validated.v1 payload:")


def test_unparseable_time_is_refused() -> None:
    decoded = events.decode(_with(events.encode(_validated()), "ce_time", b"yesterday"))
    assert isinstance(decoded, events.DecodeError)
    assert decoded.reason.startswith("invalid ce_time:")


def test_decode_error_keeps_the_record_for_the_dlq() -> None:
    record = events.Record(topic="mlcd.data", value=b"garbage", key=b"k")
    decoded = events.decode(record)
    assert isinstance(decoded, events.DecodeError)
    assert decoded.record is record


def test_same_source_identity_gives_the_same_event_id() -> None:
    assert events.event_id("gitlab", "uuid-1") == events.event_id("gitlab", "uuid-1")
    assert events.event_id("gitlab", "uuid-1") != events.event_id("gitlab", "uuid-2")


def test_identity_parts_do_not_run_together() -> None:
    assert events.event_id("ab", "c") != events.event_id("a", "bc")


def test_derived_id_is_stable_per_cause_and_type() -> None:
    first = events.derived_id("cause-1", events.TrainingStarted.type)
    assert first == events.derived_id("cause-1", events.TrainingStarted.type)
    assert first != events.derived_id("cause-2", events.TrainingStarted.type)
    assert first != events.derived_id("cause-1", events.TrainingFailed.type)


def test_every_type_is_past_tense_versioned_and_on_its_domain_topic() -> None:
    for type_name, cls in events.PAYLOAD_TYPES.items():
        assert type_name.startswith("mlcd.") and type_name.endswith(".v1")
        assert cls.topic() == "mlcd." + type_name.split(".")[1]
        assert cls.topic() in events.TOPICS
    assert events.DLQ_TOPIC in events.TOPICS


def test_structured_mode_carries_the_cloudevents_attributes() -> None:
    structured = _validated().structured()
    assert structured["specversion"] == "1.0"
    assert structured["type"] == "mlcd.data.validated.v1"
    assert structured["subject"] == "wine_quality"
    assert structured["time"] == "2026-11-23T12:00:00+00:00"
    assert structured["data"]["rows"] == 100
