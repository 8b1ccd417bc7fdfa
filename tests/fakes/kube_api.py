"""A Kubernetes API emulator for InferenceServices on loopback, built on kmock.

It stands in for kube-apiserver: stores InferenceServices, serves GET, LIST and JSON merge-patch PATCH,
answers 409 when a patch carries a stale resourceVersion, refuses (422) any write that breaks KServe's
CRD schema, and bumps `metadata.generation` on every spec change. POST and DELETE are not served: mlcd's
Role allows neither. Status is a subresource: clients' patches cannot write it.

By default it also plays the KServe controller in the simplest way (each new revision Ready at once,
unless told to fail a storage URI). `running(reconcile=False)` leaves that to a real controller
stand-in (tests/fakes/kserve_controller.py), which `watch()`es every write and `write_status()`es.

The custom-object store under it, `ObjectStore`, is shared with the other emulators (tests/fakes/
kubeflow_api.py, seldon_controller.py), as are `merge` (RFC 7386), CRD schema loading and `serving`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import jsonschema
import kmock
import yaml

CRD = Path("/work/shared/schemas/kserve/serving.kserve.io_inferenceservices.yaml")
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MERGE_PATCH = "application/merge-patch+json"
Event = TypeVar("Event")


@functools.cache
def crd_openapi_schema(path: Path, version: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of one version of a CustomResourceDefinition."""
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def crd_schema() -> dict[str, Any]:
    return crd_openapi_schema(CRD, VERSION)


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


# --- the object store every emulator here keeps ---------------------------------------------------


@dataclass
class ObjectStore(Generic[Event]):
    """Custom objects as kube-apiserver keeps them, by (plural, namespace, name).

    One resourceVersion counter serves every write (`version()`). `fetch` and `listing` are kmock's GET
    and LIST handlers (a List in Kubernetes' shape); `existing`, `vacant`, `fresh` and `check` answer 404,
    409 AlreadyExists, 409 Conflict and 422 in kube-apiserver's words; `remove` is DELETE's work. Every
    `watch()` queue receives what the emulator `notify()`s, in the emulator's own shape. `writes` records
    (verb, plural, name) of what the emulator wrote, `refused` every 422's problems.
    """

    kinds: dict[str, str] = field(default_factory=dict)  # plural: Kind
    group: str = ""  # messages name a resource `plural.group`, or `plural` alone when this is empty
    api_version: str = ""  # a List's apiVersion, none when empty
    list_version: str = ""  # a List's resourceVersion; when empty a new one each time, as kube-apiserver's
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _watchers: list[asyncio.Queue[Event]] = field(default_factory=list)

    def watch(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._watchers.append(queue)
        return queue

    def notify(self, event: Event) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)

    def version(self) -> str:
        """A new resourceVersion."""
        return str(next(self._versions))

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def of_kind(self, plural: str) -> list[dict[str, Any]]:
        return [o for (p, _, _), o in self.objects.items() if p == plural]

    def put(self, plural: str, namespace: str, obj: dict[str, Any]) -> None:
        """A controller's own create (Trials)."""
        obj["metadata"].update(namespace=namespace, resourceVersion=self.version())
        self.objects[(plural, namespace, obj["metadata"]["name"])] = obj

    def write_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A controller's write to the status subresource (a new resourceVersion, no new generation)."""
        obj = self.objects.get((plural, namespace, name))
        if obj is not None:
            obj["status"] = copy.deepcopy(status)
            obj["metadata"]["resourceVersion"] = self.version()

    # --- the HTTP side ----------------------------------------------------------------------------

    async def fetch(self, request: kmock.Request) -> dict[str, Any]:
        return self.existing(request)

    async def listing(self, request: kmock.Request) -> dict[str, Any]:
        plural = self.key(request)[0]
        items = [
            o for (p, ns, _), o in self.objects.items() if p == plural and request.namespace in (None, ns)
        ]
        head = {"apiVersion": self.api_version} if self.api_version else {}
        return {
            **head,
            "kind": f"{self.kinds[plural]}List",
            "metadata": {"resourceVersion": self.list_version or self.version()},
            "items": items,
        }

    def key(self, request: kmock.Request) -> tuple[str, str, str]:
        """(plural, namespace, name) of the object a request is about."""
        plural = str(request.resource.plural if request.resource is not None else "")
        return plural, request.namespace or "", request.name or ""

    def resource(self, plural: str) -> str:
        return f"{plural}.{self.group}" if self.group else plural

    def existing(self, request: kmock.Request) -> dict[str, Any]:
        """The object a request names, or 404."""
        plural, namespace, name = self.key(request)
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            raise kmock.KubernetesError(
                404, "NotFound", f'{self.resource(plural)} "{request.name}" not found'
            )
        return obj

    def vacant(self, plural: str, namespace: str, name: str) -> None:
        """409 when a create names an object that is there."""
        if (plural, namespace, name) in self.objects:
            raise kmock.KubernetesError(
                409, "AlreadyExists", f'{self.resource(plural)} "{name}" already exists'
            )

    def fresh(self, request: kmock.Request, current: dict[str, Any]) -> None:
        """409 when a patch carries a resourceVersion other than the object's."""
        sent = (request.data.get("metadata") or {}).get("resourceVersion")
        if sent is not None and sent != current["metadata"]["resourceVersion"]:
            raise kmock.KubernetesError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self.resource(self.key(request)[0])} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )

    def check(self, validator: jsonschema.Draft7Validator | None, subject: str, obj: dict[str, Any]) -> None:
        """422 (`<subject> is invalid: ...`) when the object breaks the schema, if there is one."""
        errors = validator.iter_errors(obj) if validator else []
        problems = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        if problems:
            self.refused.append("; ".join(problems))
            raise kmock.KubernetesError(422, "Invalid", f"{subject} is invalid: " + "; ".join(problems))

    def remove(self, request: kmock.Request) -> tuple[str, str, str]:
        """DELETE's work: 404 unless the object is there; recorded in `writes`; its key."""
        self.existing(request)
        key = self.key(request)
        self.objects.pop(key)
        self.writes.append(("delete", key[0], key[2]))
        return key


def without_status(obj: dict[str, Any]) -> dict[str, Any]:
    """What a write to a resource with a status subresource is about."""
    return {k: v for k, v in obj.items() if k != "status"}


def deleted(name: str) -> dict[str, Any]:
    """kube-apiserver's answer to a DELETE."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}


@asynccontextmanager
async def serving(
    resources: Iterable[tuple[str, str, str]], handlers: dict[kmock.action, kmock.Payload]
) -> AsyncIterator[str]:
    """kmock on a free loopback port with `handlers` for each (group, version, plural); yields its URL."""
    scaffold = kmock.KubernetesScaffold()
    for group, version, plural in resources:
        resource = kmock.resource(group, version, plural)
        for action, handler in handlers.items():
            scaffold[action, resource] << handler
    async with scaffold, kmock.Server(scaffold) as server:
        yield str(server.url).rstrip("/")


# --- InferenceServices ----------------------------------------------------------------------------


def _inference_services() -> ObjectStore[tuple[str, str]]:
    return ObjectStore({PLURAL: "InferenceService"}, GROUP, f"{GROUP}/{VERSION}")


@dataclass
class KubeApi:
    """The emulator's state; `url` is where the official client should point."""

    validator: jsonschema.Draft7Validator
    url: str = ""
    failing_uris: set[str] = field(default_factory=set)
    patches: list[dict[str, Any]] = field(default_factory=list)
    conflicts_to_inject: int = 0
    verbs: list[str] = field(default_factory=list)
    reconcile: bool = True
    store: ObjectStore[tuple[str, str]] = field(default_factory=_inference_services)
    _revisions: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The InferenceServices by (namespace, name)."""
        return {(ns, name): o for (_, ns, name), o in self.store.objects.items()}

    def watch(self) -> asyncio.Queue[tuple[str, str]]:
        """A queue that receives (namespace, name) after every write to an InferenceService's spec."""
        return self.store.watch()

    def write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """The controller's write to the status subresource (a new resourceVersion, no new generation)."""
        self.get(namespace, name)  # a KeyError for one that is not there
        self.store.write_status(PLURAL, namespace, name, status)

    def _changed(self, namespace: str, name: str, *, new_revision: bool) -> None:
        if self.reconcile:
            self._reconcile(namespace, name, new_revision=new_revision)
        else:
            self.touch(namespace, name)
        self.store.notify((namespace, name))

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
        self.store.objects[(PLURAL, namespace, name)] = obj
        self._changed(namespace, name, new_revision=True)
        return obj

    def fail(self, storage_uri: str) -> None:
        """Revisions serving this storage URI never become Ready (a model that cannot load)."""
        self.failing_uris.add(storage_uri)

    def touch(self, namespace: str, name: str) -> None:
        """Another writer changed the object: every resourceVersion read before is now stale."""
        self.get(namespace, name)["metadata"]["resourceVersion"] = self.store.version()

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(PLURAL, namespace, name)
        if obj is None:
            raise KeyError((namespace, name))
        return obj

    # --- the HTTP side ----------------------------------------------------------------------------

    async def fetch(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("get")
        return await self.store.fetch(request)

    async def listing(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("list")
        return await self.store.listing(request)

    async def patch(self, request: kmock.Request) -> dict[str, Any]:
        self.verbs.append("patch")
        if request.headers.get("Content-Type") != MERGE_PATCH:
            raise kmock.KubernetesError(
                415, "UnsupportedMediaType", "custom resources take merge patches only"
            )
        current = self.store.existing(request)
        body = request.data
        self.patches.append(body)
        if self.conflicts_to_inject > 0:
            self.conflicts_to_inject -= 1
            self.touch(request.namespace or "", request.name or "")
        self.store.fresh(request, current)
        merged = merge(current, without_status(body))
        merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self._check(merged)
        if merged.get("spec") != current.get("spec"):
            merged["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        namespace, name = request.namespace or "", request.name or ""
        self.store.objects[(PLURAL, namespace, name)] = merged
        self._changed(namespace, name, new_revision=_template(merged) != _template(current))
        return self.get(namespace, name)

    async def refuse(self, request: kmock.Request) -> None:
        self.verbs.append(str(request.action).lower())
        raise kmock.KubernetesError(403, "Forbidden", "mlcd's Role allows get, list, watch and patch only")

    def _check(self, obj: dict[str, Any]) -> None:
        self.store.check(self.validator, "InferenceService", without_status(obj))

    # --- what the KServe controller would do ------------------------------------------------------

    def _reconcile(self, namespace: str, name: str, *, new_revision: bool) -> None:
        obj = self.get(namespace, name)
        obj["metadata"]["resourceVersion"] = self.store.version()
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
    handlers: dict[kmock.action, kmock.Payload] = {
        kmock.action.FETCH: api.fetch,
        kmock.action.LIST: api.listing,
        kmock.action.UPDATE: api.patch,
        kmock.action.CREATE: api.refuse,
        kmock.action.DELETE: api.refuse,
    }
    async with serving([(GROUP, VERSION, PLURAL)], handlers) as url:
        api.url = url
        yield api
