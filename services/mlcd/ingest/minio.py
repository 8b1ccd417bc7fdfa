"""MinIO bucket notifications (S3 event JSON, webhook or Kafka target) → one DataArrived per new object.

Only `s3:ObjectCreated:*` under a model's landing bucket and prefix counts; deletions and other
prefixes are journaled as ignored. Object keys arrive URL-encoded (`batch+01.csv`) and are decoded.
The uploader, `userIdentity.principalId` (MinIO puts the access key there, or the parent user of a service
account or STS credential), becomes the batch's author: it may not approve a candidate trained on it.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field

from mlcd import events
from mlcd.ingest.delivery import (
    Envelope,
    ModelDirectory,
    Unparseable,
    envelope,
    ignored,
    load_object,
    validate,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Object(_Body):
    key: str
    size: int = 0
    etag: str = Field("", alias="eTag")
    version_id: str = Field("", alias="versionId")
    sequencer: str = ""


class _Bucket(_Body):
    name: str


class _S3(_Body):
    bucket: _Bucket
    object: _Object


class _Identity(_Body):
    principal_id: str = Field("", alias="principalId")


class _Record(_Body):
    event_name: str = Field(alias="eventName")
    s3: _S3
    user_identity: _Identity | None = Field(None, alias="userIdentity")


class _Notification(_Body):
    records: list[_Record] = Field(alias="Records")


def parse(body: bytes, models: ModelDirectory) -> list[Envelope]:
    """One event per record of a MinIO notification."""
    notification = validate(_Notification, load_object(body), "MinIO notification")
    if not notification.records:
        raise Unparseable("MinIO notification without Records")
    return [_record(record, models) for record in notification.records]


def _record(record: _Record, models: ModelDirectory) -> Envelope:
    bucket = record.s3.bucket.name
    obj = record.s3.object
    key = unquote_plus(obj.key)
    identity = ("minio", bucket, key, obj.version_id or obj.etag, obj.sequencer)
    if not record.event_name.startswith("s3:ObjectCreated:"):
        return ignored("minio", record.event_name, "only created objects start work", identity)
    policy = models.for_object(bucket, key)
    if policy is None:
        return ignored("minio", record.event_name, f"no model lands data at {bucket}/{key}", identity)
    return envelope(
        events.DataArrived(
            model=policy.model,
            bucket=bucket,
            key=key,
            uri=f"s3://{bucket}/{key}",
            size=obj.size,
            etag=obj.etag.strip('"'),
            version_id=obj.version_id,
            author=record.user_identity.principal_id if record.user_identity else "",
        ),
        identity,
    )
