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
from typing import Any

from fastapi import APIRouter, FastAPI

from mlcd import auth, domain_metrics, events, logs, ports, status, token_file
from mlcd.builder import handlers as builder
from mlcd.bus import kafka_security
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.bus.port import Bus
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.deployer import handlers as deployer
from mlcd.gatekeeper import handlers as gatekeeper
from mlcd.lineage_export import handlers as lineage_export
from mlcd.notifier import handlers as notifier
from mlcd.policy.book import PolicyBook
from mlcd.runner import ServiceHost
from mlcd.store import database
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
        lineage_export.SERVICE,
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
    tuner: ports.Tuner
    jobs: ports.TrainingJobs
    lineage: tuple[ports.LineageExport, ...] = ()

    def by_name(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    async def close(self) -> None:
        """Let adapters that own processes or connections release them (the local runner's workers)."""
        for port in [*self.by_name().values(), *self.lineage]:
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
    from mlcd.adapters import gitlab, katib, kfp, mlflow, notify, objectstore, training_jobs

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
        tuner=katib.build_tuner(settings),
        jobs=training_jobs.build(settings),
        lineage=_lineage(settings),
    )


def _lineage(settings: Settings) -> tuple[ports.LineageExport, ...]:
    """The configured lineage stores; none configured, none built (and the exporter is not started)."""
    if not lineage_export.configured(settings):
        return ()
    from mlcd.adapters import mlmd, openlineage

    return tuple(store for store in (openlineage.build(settings), mlmd.build(settings)) if store is not None)


def _serving(settings: Settings, policies: PolicyBook) -> tuple[ports.Serving, ports.Analysis]:
    from mlcd.adapters import prometheus

    if settings.kserve_namespace or settings.seldon_namespace:
        # Each model's policy picks its platform (rollout.platform); unset means KServe when configured.
        from mlcd.adapters import kserve, platforms, seldon

        served: dict[str, ports.Serving] = {}
        if settings.kserve_namespace:
            served["kserve"] = kserve.build(settings, policies)
        analysis: ports.Analysis = prometheus.build(settings)
        if settings.seldon_namespace:
            served["seldon"] = seldon.build(settings, policies)
            analysis = seldon.SeldonAnalysis(analysis, settings.seldon_inference_url, policies)
        return platforms.ServingByPlatform(served, "kserve", policies), analysis
    from mlcd.local import serving as local_serving

    local = local_serving.build(settings)
    analysis = prometheus.build(settings) if settings.prometheus_url else prometheus.LocalAnalysis(local)
    return local, analysis


@dataclass
class System:
    """What one process runs: its host (store, bus, supervised workers), its HTTP app and its ports."""

    settings: Settings
    host: ServiceHost
    app: FastAPI | None = None
    ports: Ports | None = None

    async def close(self) -> None:
        if self.ports is not None:
            await self.ports.close()


def build_bus(settings: Settings) -> Bus:
    """The real broker when `MLCD_KAFKA_BOOTSTRAP` is set, else the in-process bus."""
    if settings.kafka_bootstrap:
        return KafkaBus(
            settings.kafka_bootstrap,
            events.TOPICS,
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            enable_idempotence=settings.kafka_enable_idempotence,
            request_timeout_s=settings.kafka_request_timeout_s,
            namespace=settings.kafka_namespace,
            session_timeout_s=settings.kafka_session_timeout_s,
            heartbeat_interval_s=settings.kafka_heartbeat_interval_s,
            max_request_size=settings.kafka_max_request_size,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            security=kafka_security.client_options(settings),
        )
    return MemoryBus(
        events.TOPICS, partitions=settings.kafka_partitions, max_request_size=settings.kafka_max_request_size
    )


def system(
    settings: Settings,
    services: Sequence[ServiceSpec],
    *,
    http: bool,
    ui: bool = False,
    ports: Ports | None = None,
    bus: Bus | None = None,
) -> System:
    """Compose a process: the consumer services it hosts and, with `http`, ingest's endpoints and the API."""
    from mlcd import http as http_boundary

    if any(spec.name == lineage_export.NAME for spec in services):
        lineage_export.check_can_start(settings)
    built = ports or build_ports(settings)
    host = ServiceHost(
        settings,
        services,
        built.by_name(),
        bus=bus or build_bus(settings),
        engine=database.create_engine(settings.effective_database_url),
    )
    health = status.AdapterHealth(built.outside_systems(), settings.adapter_check_interval_s)
    host.supervise(Worker("adapter-health", health.run))
    host.supervise(domain_metrics.worker(host.engine))
    if not http:
        app = http_boundary.create_app([status.router(host, health)], host.readiness)
        return System(settings, host, app, built)
    host.supervise(_raw_delivery_worker(settings, host, built))
    if ui:
        from mlcd.local import serving as local_serving

        if isinstance(built.serving, local_serving.LocalServing):
            host.supervise(Worker("local-serving", built.serving.run))
    readiness = host.delivery_readiness if not services else host.readiness
    routers = [*api_routers(settings, host, built, ui=ui), status.router(host, health)]
    return System(settings, host, http_boundary.create_app(routers, readiness), built)


def embedded(settings: Settings, *, progress: bool) -> System:
    """`mlcd up`: every service in one process, with the embedded default's own workers beside them: the
    object folder's watcher (the folder stands in for MinIO and its notifications) and, on a terminal, the
    progress view."""
    from mlcd.local.object_watch import ObjectFolderWatcher
    from mlcd.local.progress import ProgressView

    hosted = [
        spec
        for spec in consumer_services()
        if spec.name != lineage_export.NAME or lineage_export.configured(settings)
    ]
    composed = system(settings, hosted, http=True, ui=True)
    if settings.s3_endpoint is None and settings.minio_webhook_token is not None:
        watcher = ObjectFolderWatcher(
            settings.home / "objects",
            f"http://{settings.http_host}:{settings.http_port}/hooks/minio",
            settings.minio_webhook_token.get_secret_value(),
        )
        composed.host.supervise(Worker("object-folder-watcher", watcher.run))
    if progress:
        composed.host.supervise(Worker("progress", ProgressView(composed.host.engine).run))
    return composed


def api_routers(settings: Settings, host: ServiceHost, built: Ports, *, ui: bool) -> list[APIRouter]:
    """The HTTP surface of a process that runs ingest (`mlcd serve ingest`, `mlcd up`)."""
    from mlcd import explain_api, journal_api, lineage_api, oncall_api
    from mlcd.deployer import app as deployer_app
    from mlcd.gatekeeper import app as gatekeeper_app
    from mlcd.ingest import app as ingest_app

    identify: Callable[[str | None], auth.Identity | None] = token_file.Identifier(
        settings.effective_tokens_file
    )
    result = [
        ingest_app.router(
            settings=settings, policies=built.policies, bus=host.bus, engine=host.engine, waker=host.waker
        ),
        journal_api.router(lambda: host.engine, identify),
        explain_api.router(lambda: host.engine, built.registry, built.policies, identify, built.serving),
        lineage_api.router(lambda: host.engine, identify),
        oncall_api.router(
            lambda: host.engine,
            identify,
            built.policies,
            oncall_api.Links.of(
                getattr(built.registry, "tracking_uri", None),
                settings.kfp_host,
                settings.gitlab_url,
                settings.s3_url if settings.s3_endpoint else None,
            ),
        ),
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
