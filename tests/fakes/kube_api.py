"""A Kubernetes API emulator for InferenceServices on loopback, built on kmock.

It stands in for kube-apiserver: stores InferenceServices, serves GET, LIST and JSON merge-patch PATCH,
answers 409 when a patch carries a stale resourceVersion, refuses (422) any write that breaks KServe's
CRD schema, and bumps `metadata.generation` on every spec change. POST and DELETE are not served: mlcd's
Role allows neither. Status is a subresource: clients' patches cannot write it.

By default it also plays the KServe controller in the simplest way (each new revision Ready at once,
unless told to fail a storage URI). `running(reconcile=False)` leaves that to a real controller
stand-in (tests/fakes/kserve_controller.py), which `watch()`es every write and `write_status()`es.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import yaml

CRD = Path("/work/shared/schemas/kserve/serving.kserve.io_inferenceservices.yaml")
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MERGE_PATCH = "application/merge-patch+json"


@functools.cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.load(CRD.read_text(), Loader=yaml.CSafeLoader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, written here independently of the adapter's own."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


@dataclass
class KubeApi:
    """The emulator's state; `url` is where the official client should point."""

    validator: jsonschema.Draft7Validator
    url: str = ""
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    failing_uris: set[str] = field(default_factory=set)
    patches: list[dict[str, Any]] = field(default_factory=list)
    conflicts_to_inject: int = 0
    verbs: list[str] = field(default_factory=list)
    reconcile: bool = True
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _revisions: dict[tuple[str, str], int] = field(default_factory=dict)
    _watchers: list[asyncio.Queue[tuple[str, str]]] = field(default_factory=list)

    def watch(self) -> asyncio.Queue[tuple[str, str]]:
        """A queue that receives (namespace, name) after every write to an InferenceService's spec."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._watchers.append(queue)
        return queue

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """The controller's write to the status subresource (a new resourceVersion, no new generation)."""
        obj = self.objects[(namespace, name)]
        obj["status"] = copy.deepcopy(status)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _changed(self, namespace: str, name: str, *, new_revision: bool) -> None:
        if self.reconcile:
            self._reconcile(namespace, name, new_revision=new_revision)
        else:
            self.objects[(namespace, name)]["metadata"]["resourceVersion"] = str(next(self._versions))
        for queue in self._watchers:
            queue.put_nowait((namespace, name))

    def add(
        self,
        namespace: str,
        name: str,
        storage_uri: str,
        model_format: str = "sklearn",
        deployment_mode: str = "Serverless",
    ) -> dict[str, Any]:
        """An InferenceService as the Helm chart would create it (Serverless, or RawDeployment)."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "generation": 1}
        if deployment_mode != "Serverless":
            metadata["annotations"] = {"serving.kserve.io/deploymentMode": deployment_mode}
        obj: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceService",
            "metadata": metadata,
            "spec": {
                "predictor": {"model": {"modelFormat": {"name": model_format}, "storageUri": storage_uri}}
            },
        }
        self._check(obj)
        self.objects[(namespace, name)] = obj
        self._changed(namespace, name, new_revision=True)
        return obj

    def fail(self, storage_uri: str) -> None:
        """Revisions serving this storage URI never become Ready (a model that cannot load)."""
        self.failing_uris.add(storage_uri)

    def touch(self, namespace: str, name: str) -> None:
        """Another writer changed the object: every resourceVersion read before is now stale."""
        self.objects[(namespace, name)]["metadata"]["resourceVersion"] = str(next(self._versions))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(namespace, name)]

    # --- the HTTP side ----------------------------------------------------------------------------

    async def fetch(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("get")
        return self._existing(request)

    async def listing(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("list")
        items = [o for (ns, _), o in self.objects.items() if request.namespace in (None, ns)]
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceServiceList",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    async def patch(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("patch")
        if request.headers.get("Content-Type") != MERGE_PATCH:
            raise kmock.KubernetesError(
                415, "UnsupportedMediaType", "custom resources take merge patches only"
            )
        current = self._existing(request)
        body = request.data
        self.patches.append(body)
        if self.conflicts_to_inject > 0:
            self.conflicts_to_inject -= 1
            self.touch(request.namespace or "", request.name or "")
        sent_version = (body.get("metadata") or {}).get("resourceVersion")
        if sent_version is not None and sent_version != current["metadata"]["resourceVersion"]:
            raise kmock.KubernetesError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{request.name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        merged = merge(current, {k: v for k, v in body.items() if k != "status"})
        merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self._check(merged)
        if merged.get("spec") != current.get("spec"):
            merged["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        key = (request.namespace or "", request.name or "")
        self.objects[key] = merged
        self._changed(*key, new_revision=_template(merged) != _template(current))
        return self.objects[key]

    async def refuse(self, request: kmock.Request) -> None:
        self.verbs.append(str(request.action).lower())
        raise kmock.KubernetesError(403, "Forbidden", "mlcd's Role allows get, list, watch and patch only")

    def _existing(self, request: kmock.Request) -> dict[str, Any]:
        obj = self.objects.get((request.namespace or "", request.name or ""))
        if obj is None:
            raise kmock.KubernetesError(
                404, "NotFound", f'inferenceservices.serving.kserve.io "{request.name}" not found'
            )
        return obj

    def _check(self, obj: dict[str, Any]) -> None:
        problems = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self.validator.iter_errors({k: v for k, v in obj.items() if k != "status"})
        ]
        if problems:
            raise kmock.KubernetesError(422, "Invalid", "InferenceService is invalid: " + "; ".join(problems))

    # --- what the KServe controller would do ------------------------------------------------------

    def _reconcile(self, namespace: str, name: str, *, new_revision: bool) -> None:
        obj = self.objects[(namespace, name)]
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        status = obj.setdefault("status", {})
        predictor = obj["spec"]["predictor"]
        components = status.setdefault("components", {}).setdefault("predictor", {})
        if new_revision:
            number = self._revisions.get((namespace, name), 0) + 1
            self._revisions[(namespace, name)] = number
            created = f"{name}-predictor-{number:05d}"
            components["latestCreatedRevision"] = created
            if predictor["model"]["storageUri"] not in self.failing_uris:
                components["latestReadyRevision"] = created
        ready, rolled = components.get("latestReadyRevision"), components.get("latestRolledoutRevision")
        if (
            predictor.get("canaryTrafficPercent") is None
            and ready == _latest_created(components)
            and ready != rolled
        ):
            if rolled:
                components["previousRolledoutRevision"] = rolled
            components["latestRolledoutRevision"] = ready
        latest, previous = components.get("latestReadyRevision"), components.get("latestRolledoutRevision")
        percent = predictor.get("canaryTrafficPercent")
        traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
        if percent is not None and previous and previous != latest:
            traffic = [
                {"revisionName": latest, "percent": percent, "latestRevision": True, "tag": "latest"},
                {"revisionName": previous, "percent": 100 - percent, "latestRevision": False, "tag": "prev"},
            ]
        components["traffic"] = traffic
        canaries = obj["spec"].get("canary") or []
        status["canaryStatuses"] = [
            {
                "name": c["predictor"].get("name", f"canary-{i}"),
                "ready": c["predictor"]["model"]["storageUri"] not in self.failing_uris,
                "trafficPercent": c["trafficPercent"],
            }
            for i, c in enumerate(canaries)
        ]
        failed = components.get("latestReadyRevision") != components.get("latestCreatedRevision") or not all(
            c["ready"] for c in status["canaryStatuses"]
        )
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "False" if failed else "True",
                "reason": "RevisionFailed" if failed else "",
                "message": "revision failed to load its model" if failed else "",
            }
        ]
        if canaries:
            canary_failed = not all(c["ready"] for c in status["canaryStatuses"])
            status["conditions"].append(
                {
                    "type": "CanaryReady",
                    "status": "False" if canary_failed else "True",
                    "reason": "CanaryFailed" if canary_failed else "",
                }
            )
        status["observedGeneration"] = obj["metadata"].get("generation", 1)


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema())


def _latest_created(components: dict[str, Any]) -> Any:
    return components.get("latestCreatedRevision")


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    """The predictor as Knative sees it: a change here makes a new revision, the traffic split does not."""
    return {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}


@asynccontextmanager
async def running(*, reconcile: bool = True) -> AsyncIterator[KubeApi]:
    """The emulator on a free loopback port; `reconcile=False` leaves status to a controller."""
    api = KubeApi(_validator(), reconcile=reconcile)
    handler = kmock.KubernetesScaffold()
    resource = kmock.resource(GROUP, VERSION, PLURAL)
    handler[kmock.action.FETCH, resource] << api.fetch
    handler[kmock.action.LIST, resource] << api.listing
    handler[kmock.action.UPDATE, resource] << api.patch
    handler[kmock.action.CREATE, resource] << api.refuse
    handler[kmock.action.DELETE, resource] << api.refuse
    async with handler, kmock.Server(handler) as server:
        api.url = str(server.url).rstrip("/")
        yield api
