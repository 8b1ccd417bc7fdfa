"""The composition root: settings pick the adapter behind each port; services and routers are wired here.

Read this file to see the whole chain: which service consumes what (each SERVICE spec), which adapter
fills each port, and which routers the HTTP app serves.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from mlcd import auth
from mlcd.bus.service import ServiceSpec
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook

CONSUMER_SERVICES: dict[str, str] = {
    "builder": "mlcd.builder.handlers",
    "validator": "mlcd.validator.handlers",
    "trainer": "mlcd.trainer.handlers",
    "gatekeeper": "mlcd.gatekeeper.handlers",
    "deployer": "mlcd.deployer.handlers",
}
SERVICES: tuple[str, ...] = ("ingest", *CONSUMER_SERVICES)


def service(name: str) -> ServiceSpec:
    spec: ServiceSpec = importlib.import_module(CONSUMER_SERVICES[name]).SERVICE
    return spec


def consumer_services() -> list[ServiceSpec]:
    return [service(name) for name in CONSUMER_SERVICES]


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


def build_ports(settings: Settings) -> dict[str, Any]:
    """Every port, filled by the production adapter when configured, else the embedded default."""
    from mlcd.adapters import gitlab, kfp, mlflow, notify, objectstore

    policies = PolicyBook(settings.policies_dir)
    serving, analysis = _serving(settings, policies)
    return {
        "settings": settings,
        "policies": policies,
        "registry": mlflow.build(settings),
        "objects": objectstore.build(settings),
        "code_host": gitlab.build(settings),
        "orchestrator": kfp.build(settings),
        "serving": serving,
        "analysis": analysis,
        "notifier": notify.build(settings),
    }


async def close_ports(ports: dict[str, Any]) -> None:
    """Let adapters that own processes or connections release them (the local runner's workers)."""
    for port in ports.values():
        close = getattr(port, "close", None)
        if close is not None and inspect.iscoroutinefunction(close):
            await close()


def _serving(settings: Settings, policies: PolicyBook) -> tuple[Any, Any]:
    from mlcd.adapters import prometheus

    if settings.kserve_namespace:
        from mlcd.adapters import kserve

        return kserve.build(settings, policies), prometheus.build(settings)
    from mlcd.local import serving as local_serving

    local = local_serving.build(settings)
    analysis = prometheus.build(settings) if settings.prometheus_url else prometheus.LocalAnalysis(local)
    return local, analysis


def routers(settings: Settings, host: Any, ports: dict[str, Any], *, with_ui: bool) -> list[APIRouter]:
    """The HTTP surface of a process that runs ingest (`mlcd serve ingest`, `mlcd up`)."""
    from mlcd import journal_api
    from mlcd.deployer import app as deployer_app
    from mlcd.gatekeeper import app as gatekeeper_app
    from mlcd.ingest import app as ingest_app

    identify: Callable[[str | None], auth.Identity | None] = Identifier(settings.effective_tokens_file)
    policies = ports["policies"]
    result = [
        ingest_app.router(
            settings=settings, policies=policies, bus=host.bus, engine=host.engine, waker=host.waker
        ),
        journal_api.router(lambda: host.engine, identify),
        gatekeeper_app.router(
            engine=host.engine,
            waker=host.waker,
            policies=policies,
            identify=identify,
            code_host=ports["code_host"],
        ),
        deployer_app.router(
            engine=host.engine,
            waker=host.waker,
            registry=ports["registry"],
            identify=identify,
            policies=policies,
        ),
    ]
    if with_ui:
        from mlcd.local import serving as local_serving
        from mlcd.local import ui

        result.append(ui.router(policies, identify))
        if isinstance(ports["serving"], local_serving.LocalServing):
            result.append(local_serving.router(ports["serving"]))
    return result


def ingest_companions(settings: Settings, host: Any, ports: dict[str, Any]) -> list[Any]:
    """Tasks that run beside the ingest HTTP endpoints: MinIO's Kafka target and replayed deliveries."""
    from mlcd.ingest.raw_topics import RawDeliveryConsumer

    raw = RawDeliveryConsumer(
        bus=host.bus,
        engine=host.engine,
        policies=ports["policies"],
        minio_topic=settings.minio_kafka_topic,
        waker=host.waker,
    )
    return [raw.run]


def app(settings: Settings, host: Any, ports: dict[str, Any], *, with_ui: bool) -> FastAPI:
    from mlcd import http

    async def readiness() -> dict[str, str | None]:
        parts: dict[str, str | None] = await host.readiness()
        for name in ("registry", "objects", "code_host", "orchestrator", "serving"):
            try:
                await ports[name].ping()
                parts[name] = None
            except Exception as e:  # readiness names a failing part instead of raising
                parts[name] = f"{type(e).__name__}: {e}"
        return parts

    return http.create_app(routers(settings, host, ports, with_ui=with_ui), readiness)
