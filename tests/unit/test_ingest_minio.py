"""MinIO notifications become one DataArrived per new object under a model's landing prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcd import events
from mlcd.ingest import minio
from mlcd.ingest.delivery import Unparseable
from mlcd.policy.book import PolicyBook

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
POLICIES = PolicyBook(REPO / "policies")


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_created_object_with_an_encoded_key_arrives_decoded() -> None:
    [arrived] = minio.parse(body("minio_put_encoded_key.json"), POLICIES)
    assert isinstance(arrived.data, events.DataArrived)
    assert arrived.data.model_dump() == {
        "model": "wine_quality",
        "bucket": "landing",
        "key": "wine_quality/batch 01.csv",
        "uri": "s3://landing/wine_quality/batch 01.csv",
        "size": 1234,
        "etag": "d41d8cd98f00b204e9800998ecf8427e",
        "version_id": "3f6c2b1e-7a1d-4c5b-9e8f-0a1b2c3d4e5f",
        "author": "minioadmin",
    }


def test_the_uploader_is_the_principal_of_the_record_and_optional() -> None:
    raw = json.loads(body("minio_put_encoded_key.json"))
    raw["Records"][0]["userIdentity"] = {"principalId": "data-team-uploader"}
    [arrived] = minio.parse(json.dumps(raw).encode(), POLICIES)
    assert isinstance(arrived.data, events.DataArrived) and arrived.data.author == "data-team-uploader"
    del raw["Records"][0]["userIdentity"]
    [anonymous] = minio.parse(json.dumps(raw).encode(), POLICIES)
    assert isinstance(anonymous.data, events.DataArrived) and anonymous.data.author == ""


@pytest.mark.parametrize("fixture", ["minio_delete.json", "minio_put_other_prefix.json"])
def test_deletions_and_other_prefixes_are_ignored(fixture: str) -> None:
    [journal] = minio.parse(body(fixture), POLICIES)
    assert isinstance(journal.data, events.DeliveryIgnored)
    assert journal.data.source == "minio"


def test_results_written_under_the_landing_prefix_do_not_start_work() -> None:
    raw = json.loads(body("minio_put_encoded_key.json"))
    raw["Records"][0]["s3"]["object"]["key"] = "wine_quality%2F_validation%2Fresult.json"
    [journal] = minio.parse(json.dumps(raw).encode(), POLICIES)
    assert isinstance(journal.data, events.DeliveryIgnored)


def test_same_object_version_redelivered_has_the_same_id_and_a_new_version_does_not() -> None:
    first = minio.parse(body("minio_put_encoded_key.json"), POLICIES)[0]
    again = minio.parse(body("minio_put_encoded_key.json"), POLICIES)[0]
    raw = json.loads(body("minio_put_encoded_key.json"))
    raw["Records"][0]["s3"]["object"].update(versionId="v2", sequencer="17A9B2C3D4E5F700")
    newer = minio.parse(json.dumps(raw).encode(), POLICIES)[0]
    assert first.id == again.id != newer.id


def test_notification_without_records_is_unparseable() -> None:
    with pytest.raises(Unparseable, match="Records"):
        minio.parse(b'{"EventName": "s3:ObjectCreated:Put", "Key": "landing/x", "Records": []}', POLICIES)
