"""`mlcd serve SERVICE`: one microservice against the configured Kafka and PostgreSQL, with its HTTP face.

Ingest serves the webhooks and the API; the consumer services serve /healthz, /readyz, /status and
/metrics only.
"""

from __future__ import annotations

from mlcd import bootstrap, process
from mlcd.config import Settings
from mlcd.errors import ConfigError


async def serve(settings: Settings, name: str) -> int:
    if name not in bootstrap.SERVICES:
        raise ConfigError(f"unknown service {name!r}; choose one of {', '.join(bootstrap.SERVICES)}")
    process.ensure_port_free(settings.http_host, settings.http_port)
    ingest = name == "ingest"
    services = [] if ingest else [bootstrap.service(name)]
    return await process.run(lambda: bootstrap.system(settings, services, http=ingest, ui=ingest))
