"""The composition root: settings pick the adapter behind each port; services, workers and routers meet here.

Read this file to see the whole chain: which services a process hosts (`SERVICES`: each service's
event type → handlers mapping lives in its `handlers.SERVICE`), which adapter fills each port
(`build_ports`), and what a process runs (`system`): the host with its supervised workers, and the HTTP
app of the processes that serve the webhooks and the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from mlcd import auth, logs, metrics, ports
from mlcd.builder import handlers as builder
from mlcd.bus.port import Bus
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.deployer import handlers as deployer
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.notifier import handlers as notifier
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.supervisor import Worker
from mlcd.trainer import handlers as trainer
from mlcd.validator import handlers as validator

log = logs.get(__name__)

CONSUMER_SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        builder.SERVICE,
        validator.SERVICE,
        trainer.SERVICE,
        gatekeeper.SERVICE,
        deployer.SERVICE,
        notifier.SERVICE,
    )
}
SERVICES: tuple[str, ...] = ("ingest", *CONSUMER_SERVICES)


def service(name: str) -> ServiceSpec:
    return CONSUMER_SERVICES[name]


def consumer_services() -> list[ServiceSpec]:
    return list(CONSUMER_SERVICES.values())


@dataclass(frozen=True)
class Ports:
    """Every port a handler may ask for by parameter name."""

    settings: Settings
    policies: PolicyBook
    registry: ports.Registry
    objects: ports.ObjectStore
    code_host: ports.CodeHost
    orchestrator: ports.Orchestrator
    serving: ports.Serving
    analysis: ports.Analysis
    notifier: ports.Notifier

    def by_name(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    async def close(self) -> None:
        """Let adapters that own processes or connections release them (the local runner's workers)."""
        for port in self.by_name().values():
            close = getattr(port, "close", None)
            if close is not None and asyncio.iscoroutinefunction(close):
                await close()

    def outside_systems(self) -> dict[str, Any]:
        """The adapters whose health `/status` reports (never part of readiness)."""
        return {
            "registry": self.registry,
            "objects": self.objects,
            "code_host": self.code_host,
            "orchestrator": self.orchestrator,
            "serving": self.serving,
        }


def build_ports(settings: Settings) -> Ports:
    """Every port, filled by the production adapter when configured, else the embedded default."""
    # Imported here, not at the top: kfp, mlflow and the Kubernetes client take seconds to load, and only
    # the processes that build the ports need them.
    from mlcd.adapters import gitlab, kfp, mlflow, notify, objectstore

    policies = PolicyBook(settings.policies_dir)
    serving, analysis = _serving(settings, policies)
    return Ports(
        settings=settings,
        policies=policies,
        registry=mlflow.build(settings),
        objects=objectstore.build(settings),
        code_host=gitlab.build(settings),
        orchestrator=kfp.build(settings),
        serving=serving,
        analysis=analysis,
        notifier=notify.build(settings),
    )


def _serving(settings: Settings, policies: PolicyBook) -> tuple[ports.Serving, ports.Analysis]:
    from mlcd.adapters import prometheus

    if settings.kserve_namespace:
        from mlcd.adapters import kserve

        return kserve.build(settings, policies), prometheus.build(settings)
    from mlcd.local import serving as local_serving

    local = local_serving.build(settings)
    analysis = prometheus.build(settings) if settings.prometheus_url else prometheus.LocalAnalysis(local)
    return local, analysis


class Identifier:
    """API token check against MLCD_API_TOKENS_FILE, reread when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._book = auth.TokenBook([])

    def __call__(self, token: str | None) -> auth.Identity | None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._stamp:
            self._book, self._stamp = auth.TokenBook.load(self.path), stamp
        return self._book.identify(token)


class AdapterHealth:
    """Pings each outside system now and then: reported on `/status` and as `mlcd_adapter_up`, never
    as readiness (a process that cannot reach MLflow can still take webhooks and do much of its job)."""

    def __init__(self, systems: dict[str, Any], interval_s: float, timeout_s: float = 10.0) -> None:
        self.systems = systems
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last: dict[str, str | None] = {}

    async def check(self) -> dict[str, str | None]:
        for name, system in self.systems.items():
            try:
                await asyncio.wait_for(system.ping(), self.timeout_s)
                self.last[name] = None
            except TimeoutError:
                self.last[name] = f"no answer within {self.timeout_s:g}s"
            except Exception as e:  # a health check reports any failure by name instead of raising it
                self.last[name] = logs.without_url_credentials(f"{type(e).__name__}: {e}")
            metrics.ADAPTER_UP.labels(name).set(0 if self.last[name] else 1)
        return dict(self.last)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass


@dataclass
class System:
    """What one process runs: its host (store, bus, supervised workers), its ports, its HTTP app."""

    settings: Settings
    host: ServiceHost
    ports: Ports
    app: FastAPI | None

    async def close(self) -> None:
        await self.ports.close()


def system(
    settings: Settings,
    services: Sequence[ServiceSpec],
    *,
    http: bool,
    ui: bool = False,
    ports: Ports | None = None,
    bus: Bus | None = None,
    extra_workers: Sequence[Worker] = (),
) -> System:
    """Compose a process: the consumer services it hosts and, with `http`, ingest's endpoints and the API."""
    from mlcd import http as http_boundary

    built = ports or build_ports(settings)
    host = ServiceHost(settings, services, built.by_name(), bus=bus)
    health = AdapterHealth(built.outside_systems(), settings.adapter_check_interval_s)
    host.supervise(Worker("adapter-health", health.run))
    for worker in extra_workers:
        host.supervise(worker)
    if not http:
        app = http_boundary.create_app([_status_router(host, health)], host.readiness)
        return System(settings, host, built, app)
    host.supervise(_raw_delivery_worker(settings, host, built))
    if ui:
        from mlcd.local import serving as local_serving

        if isinstance(built.serving, local_serving.LocalServing):
            host.supervise(Worker("local-serving", built.serving.run))
    readiness = host.delivery_readiness if not services else host.readiness
    routers = [*api_routers(settings, host, built, ui=ui), _status_router(host, health)]
    return System(settings, host, built, http_boundary.create_app(routers, readiness))


def api_routers(settings: Settings, host: ServiceHost, built: Ports, *, ui: bool) -> list[APIRouter]:
    """The HTTP surface of a process that runs ingest (`mlcd serve ingest`, `mlcd up`)."""
    from mlcd import explain_api, journal_api
    from mlcd.deployer import app as deployer_app
    from mlcd.gatekeeper import app as gatekeeper_app
    from mlcd.ingest import app as ingest_app

    identify: Callable[[str | None], auth.Identity | None] = Identifier(settings.effective_tokens_file)
    result = [
        ingest_app.router(
            settings=settings, policies=built.policies, bus=host.bus, engine=host.engine, waker=host.waker
        ),
        journal_api.router(lambda: host.engine, identify),
        explain_api.router(lambda: host.engine, built.registry, built.policies, identify),
        gatekeeper_app.router(
            engine=host.engine,
            waker=host.waker,
            policies=built.policies,
            identify=identify,
            code_host=built.code_host,
            registry=built.registry,
        ),
        deployer_app.router(
            engine=host.engine,
            waker=host.waker,
            registry=built.registry,
            identify=identify,
            policies=built.policies,
            serving=built.serving,
        ),
    ]
    if ui:
        from mlcd.local import serving as local_serving
        from mlcd.local import ui as ui_page

        result.append(ui_page.router(built.policies, identify))
        if isinstance(built.serving, local_serving.LocalServing):
            result.append(local_serving.router(built.serving))
    return result


def _raw_delivery_worker(settings: Settings, host: ServiceHost, built: Ports) -> Worker:
    """MinIO's Kafka target and replayed raw deliveries, turned into events beside the HTTP endpoints."""
    from mlcd.ingest.raw_topics import RawDeliveryConsumer

    raw = RawDeliveryConsumer(
        bus=host.bus,
        engine=host.engine,
        policies=built.policies,
        minio_topic=settings.minio_kafka_topic,
        waker=host.waker,
    )
    return Worker("ingest-raw", raw.run)


def _status_router(host: ServiceHost, health: AdapterHealth) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/status", summary="Workers and outside systems: what runs, what answers (not readiness)")
    async def status() -> dict[str, Any]:
        return {
            **await host.connections(),
            "workers": host.supervisor.health(),
            "adapters": await health.check(),
        }

    return router
