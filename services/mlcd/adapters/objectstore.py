"""The ObjectStore port: a local folder (embedded default) or MinIO/S3 through the `minio` SDK."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, NotFound, ObjectChanged, PermanentError, TemporaryError
from mlcd.ports import ObjectStore, StoredObject

T = TypeVar("T")


def _checked_key(bucket: str, key: str) -> PurePosixPath:
    """The key as a relative path; refuses names that would leave the bucket's folder."""
    path = PurePosixPath(key)
    if not bucket or "/" in bucket or bucket in {".", ".."}:
        raise PermanentError(f"invalid bucket name {bucket!r}")
    if not key or path.is_absolute() or ".." in path.parts:
        raise PermanentError(f"invalid object key {key!r}")
    return path


class FolderObjectStore:
    """Objects as files under `root/<bucket>/<key>`; URIs are `file://` URLs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / _checked_key(bucket, key)

    def uri(self, bucket: str, key: str) -> str:
        return self._path(bucket, key).as_uri()

    async def stat(self, bucket: str, key: str) -> StoredObject:
        path = self._path(bucket, key)
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise NotFound(f"no object {bucket}/{key}") from e
        if not path.is_file():
            raise NotFound(f"no object {bucket}/{key}")
        return StoredObject(bucket=bucket, key=key, size=size)

    async def get(
        self, bucket: str, key: str, max_bytes: int, *, etag: str = "", version_id: str = ""
    ) -> bytes:
        if version_id:
            raise PermanentError(
                f"a folder keeps no object versions: cannot read {bucket}/{key} {version_id}"
            )
        found = await self.stat(bucket, key)
        if found.size > max_bytes:
            raise PermanentError(f"{bucket}/{key} is {found.size} bytes, over the limit of {max_bytes}")
        data = await asyncio.to_thread(self._path(bucket, key).read_bytes)
        # The folder's ETag is the one the embedded watcher reports: the MD5 of the bytes, as S3's for a
        # single-part upload.
        now = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if etag and now != etag:
            raise ObjectChanged(f"etag {etag}, now etag {now}")
        return data

    async def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        path = self._path(bucket, key)
        await asyncio.to_thread(_write_atomically, path, data)
        return path.as_uri()

    async def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdapterUnavailable(f"object folder {self.root} is not usable: {e}") from e


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{hashlib.sha1(data).hexdigest()[:8]}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NoSuchObject"}
_REFUSED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "InvalidArgument",
}


class MinioObjectStore:
    """MinIO (or any S3) through the `minio` SDK; every call runs in a thread under a timeout."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.secure = secure
        self.timeout_s = timeout_s
        self._credentials = (access_key, secret_key)
        self._client: Any = None

    def _minio(self) -> Any:
        if self._client is None:
            import urllib3
            from minio import Minio

            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=min(5.0, self.timeout_s), read=self.timeout_s),
                retries=urllib3.Retry(total=0),
                maxsize=8,
            )
            access_key, secret_key = self._credentials
            self._client = Minio(
                self.endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=self.secure,
                http_client=http,
            )
        return self._client

    def uri(self, bucket: str, key: str) -> str:
        _checked_key(bucket, key)
        return f"s3://{bucket}/{key}"

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s)
        except S3Error as e:
            if e.code == "PreconditionFailed":
                raise ObjectChanged(f"S3 {what}: the object is not the one asked for ({e.message})") from e
            if e.code in _MISSING:
                raise NotFound(f"S3 {what}: {e.code} ({e.message})") from e
            if e.code in _REFUSED:
                raise PermanentError(f"S3 at {self.endpoint} refused {what}: {e.code} ({e.message})") from e
            raise TemporaryError(f"S3 at {self.endpoint} failed {what}: {e.code} ({e.message})") from e
        except (TimeoutError, OSError, HTTPError, MinioException) as e:
            raise AdapterUnavailable(f"S3 at {self.endpoint} did not answer {what}: {e!r}") from e

    async def stat(self, bucket: str, key: str, version_id: str = "") -> StoredObject:
        _checked_key(bucket, key)
        found = await self._call(
            f"stat {bucket}/{key}",
            lambda: self._minio().stat_object(bucket, key, version_id=version_id or None),
        )
        return StoredObject(
            bucket=bucket,
            key=key,
            size=int(found.size or 0),
            etag=found.etag or "",
            version_id=found.version_id or "",
        )

    async def get(
        self, bucket: str, key: str, max_bytes: int, *, etag: str = "", version_id: str = ""
    ) -> bytes:
        try:
            found = await self.stat(bucket, key, version_id)
            if etag and found.etag != etag:
                raise ObjectChanged(f"etag {etag}, now etag {found.etag}")
            if found.size > max_bytes:
                raise PermanentError(f"{bucket}/{key} is {found.size} bytes, over the limit of {max_bytes}")
            # If-Match: an overwrite between the stat and the read fails the read (412) instead of
            # handing back other bytes.
            pinned = {"If-Match": f'"{etag}"'} if etag else None

            def read() -> bytes:
                # One byte over the limit is enough to tell an object that grew since the stat.
                response = self._minio().get_object(
                    bucket, key, length=max_bytes + 1, request_headers=pinned, version_id=version_id or None
                )
                try:
                    return bytes(response.read())
                finally:
                    response.close()
                    response.release_conn()

            data = await self._call(f"get {bucket}/{key}", read)
        except (NotFound, ObjectChanged) as e:
            if not (etag or version_id):
                raise
            raise await self._changed(bucket, key, etag, version_id) from e
        if len(data) > max_bytes:
            raise PermanentError(f"{bucket}/{key} is over the limit of {max_bytes} bytes")
        return data

    async def _changed(self, bucket: str, key: str, etag: str, version_id: str) -> PermanentError:
        """Why a pinned read failed: the object is gone (NotFound), or what it is now (ObjectChanged)."""
        now = await self.stat(bucket, key)  # NotFound: the key itself is gone
        if version_id:
            return ObjectChanged(f"version {version_id} is gone, now etag {now.etag}")
        return ObjectChanged(f"etag {etag}, now etag {now.etag}")

    async def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        _checked_key(bucket, key)
        await self._call(
            f"put {bucket}/{key}",
            lambda: self._minio().put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )
        return self.uri(bucket, key)

    async def ping(self) -> None:
        await self._call("list buckets", lambda: self._minio().list_buckets())


def build(settings: Settings) -> ObjectStore:
    """MinIO when MLCD_S3_ENDPOINT is set (host:port, TLS from its scheme or MLCD_S3_SECURE), else the
    folder MLCD_HOME/objects."""
    if not settings.s3_endpoint:
        return FolderObjectStore(settings.home / "objects")
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else ""
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
    return MinioObjectStore(
        settings.s3_host, access, secret, secure=settings.s3_secure, timeout_s=settings.s3_timeout_s
    )
