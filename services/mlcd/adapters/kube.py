"""Custom objects in one namespace through the official `kubernetes` client, for the adapters that drive
a Kubernetes operator (KServe, Seldon Core 2).

Every call runs in a worker thread under a timeout (the client is synchronous); its ApiException becomes
mlcd's error classes by status (404 NotFound, 409 Conflict, 400/401/403/415/422 PermanentError, anything
else AdapterUnavailable), and a patch carries the resourceVersion it was computed from, re-read and
retried on 409. The adapters keep what is their own: the objects, the schemas, the Role each one needs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mlcd.adapters import trace_headers
from mlcd.errors import AdapterUnavailable, Conflict, NotFound, PermanentError

T = TypeVar("T")
Patch = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def api_client() -> Any:
    """A kubernetes.client.ApiClient: in-cluster credentials when running in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, as kubectl does
    api = client.ApiClient()
    trace_headers.stamp_openapi_client(api.rest_client)
    return api


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def schema_problems(validator: Any, obj: dict[str, Any]) -> list[str]:
    """Why `obj` (status aside) breaks the jsonschema `validator`'s schema; empty when it does not."""
    written = {k: v for k, v in obj.items() if k != "status"}
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(written)
    ]


class CustomObjects:
    def __init__(
        self,
        make_client: Callable[[], Any],
        namespace: str,
        timeout_s: float = 10.0,
        *,
        conflict_retries: int = 3,
        not_found_hint: str = "",
        forbidden_hint: str = "",
    ) -> None:
        """`make_client` returns a kubernetes.client.ApiClient (called once, lazily, in a worker thread).

        The hints end the messages of a 404 and of a 401/403 (who creates the object, what the Role needs).
        """
        self._make_client = make_client
        self._client: Any = None
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.conflict_retries = conflict_retries
        self.not_found_hint = not_found_hint
        self.forbidden_hint = forbidden_hint

    async def read(self, kind: Kind, name: str) -> dict[str, Any]:
        """The object; NotFound when there is none."""

        def fetch() -> Any:
            return self._api().get_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, name, _request_timeout=self.timeout_s
            )

        found: dict[str, Any] = await self.call(f"read {kind.kind} {self.namespace}/{name}", fetch)
        return found

    async def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return await self.read(kind, name)
        except NotFound:
            return None

    async def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        def send() -> Any:
            return self._api().create_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, obj, _request_timeout=self.timeout_s
            )

        name = obj["metadata"]["name"]
        created: dict[str, Any] = await self.call(f"create {kind.kind} {self.namespace}/{name}", send)
        return created

    async def patch(
        self,
        kind: Kind,
        name: str,
        change: Callable[[dict[str, Any]], Patch | None],
        problems: Callable[[dict[str, Any]], list[str]],
    ) -> None:
        """Read, compute the merge patch (None: nothing to write), refuse it when the object it would make
        has `problems`, send it with the read's resourceVersion; a 409 starts over from a fresh read, up to
        `conflict_retries` times, then Conflict."""
        for attempt in range(1, self.conflict_retries + 1):
            current = await self.read(kind, name)
            patch = change(current)
            if patch is None:
                return
            resource_version = (current.get("metadata") or {}).get("resourceVersion")
            patch = merge_patch(patch, {"metadata": {"resourceVersion": resource_version}})
            found = problems(merge_patch(current, patch))
            if found:
                raise PermanentError(f"refusing to write an invalid {kind.kind} {name}: {'; '.join(found)}")

            def send(body: Patch = patch) -> Any:
                return self._api().patch_namespaced_custom_object(
                    kind.group,
                    kind.version,
                    self.namespace,
                    kind.plural,
                    name,
                    body,
                    _request_timeout=self.timeout_s,
                )

            try:
                await self.call(f"patch {kind.kind} {self.namespace}/{name}", send)
                return
            except Conflict:
                if attempt == self.conflict_retries:
                    raise

    async def delete(self, kind: Kind, name: str, *, propagation: str | None = None) -> bool:
        """Delete (`propagation`: Foreground, Background or Orphan; unset, the API's default); False when
        it was gone already."""

        def remove() -> Any:
            from kubernetes import client

            options = {"body": client.V1DeleteOptions(propagation_policy=propagation)} if propagation else {}
            return self._api().delete_namespaced_custom_object(
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                name,
                _request_timeout=self.timeout_s,
                **options,
            )

        try:
            await self.call(f"delete {kind.kind} {self.namespace}/{name}", remove)
        except NotFound:
            return False
        return True

    async def ping(self, kind: Kind, what: str = "") -> None:
        """List one object of `kind` (`what` names them in errors; default: the plural): the API answers
        and the Role allows it."""

        def list_some() -> Any:
            return self._api().list_namespaced_custom_object(
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                limit=1,
                _request_timeout=self.timeout_s,
            )

        await self.call(f"list {what or kind.plural} in {self.namespace}", list_some)

    async def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` in a worker thread under the timeout, its errors as mlcd's (`what` names it in them)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout_s + 1)
        except ApiException as e:
            raise self._translate(what, e) from e
        except (TimeoutError, HTTPError, OSError) as e:
            raise AdapterUnavailable(f"Kubernetes API did not answer {what}: {e!r}") from e

    def _api(self) -> Any:
        from kubernetes import client

        if self._client is None:
            self._client = self._make_client()
        return client.CustomObjectsApi(self._client)

    def _translate(self, what: str, e: Any) -> Exception:
        reason = _status_message(e)
        if e.status == 404:
            return NotFound(f"{what}: not found ({reason}){self.not_found_hint}")
        if e.status == 409:
            return Conflict(f"{what}: changed concurrently ({reason})")
        if e.status in (401, 403):
            return PermanentError(f"{what}: not allowed ({reason}){self.forbidden_hint}")
        if e.status in (400, 415, 422):
            return PermanentError(f"{what}: rejected ({reason})")
        return AdapterUnavailable(f"{what}: Kubernetes API answered {e.status} ({reason})")


def _status_message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message", e.reason))
    except (TypeError, ValueError):
        return str(e.reason)
