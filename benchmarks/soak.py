"""Soak benchmark: webhooks at a fixed rate for a long stretch through ingest and a consumer service.

Starts a Tansu broker and a fresh PostgreSQL database, then runs the soak of tests/faults/test_soak.py
(tests/support/soak.py): `mlcd serve ingest` and the probe consumer (tests.support.worker: an effect row
and an emitted DataValidated per event, inbox and outbox in one transaction per poll batch), each in its
own process, take signed MinIO notifications sent on a fixed schedule. It prints the sustained accepted
rate, missed send slots, the answer latency, the end-to-end latency (ingest's 2xx answer → the consumer's
handling), the RSS of each process at start, middle and end with its late growth, and how many events
were checked (each journaled, handled and answered exactly once, none dead-lettered).

Baseline in the same run: the same sender at the same rate against a bare uvicorn + aiokafka endpoint
that only produces the body (benchmarks/ingest.py's), read back by a plain aiokafka consumer.

    .venv/bin/python benchmarks/soak.py [--rate 20] [--duration 60] [--baseline-duration 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SCRIPT = str(Path(__file__).resolve())
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "services"))

import bus as bus_bench  # noqa: E402  (benchmarks/bus.py: the broker and the database)
import ingest as ingest_bench  # noqa: E402  (benchmarks/ingest.py: the bare endpoint)
from tests.support import flows, processes, soak  # noqa: E402

PG_ADMIN_DSN = ingest_bench.PG_ADMIN_DSN
MB = 1024 * 1024


async def _read_bare(bootstrap: str) -> None:
    """The baseline's consumer, in a process of its own as the probe is: a plain aiokafka consumer group
    on the bare topic, printing "<delivery number> <wall-clock seconds>" for each record it reads."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        ingest_bench.BARE_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=f"soak-bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    print("ready", flush=True)
    while True:
        batches = await consumer.getmany(timeout_ms=200, max_records=1000)
        now = time.time()
        for messages in batches.values():
            for message in messages:
                notice = json.loads(message.value or b"{}")
                number = int(notice["Records"][0]["s3"]["object"]["sequencer"], 16)
                print(f"{number} {now:.6f}")
        sys.stdout.flush()


def _bare_reads(out: Path) -> dict[int, float]:
    reads = [line.split() for line in out.read_text().splitlines()]
    return {int(read[0]): float(read[1]) for read in reads if len(read) == 2 and read[0].isdigit()}


async def _bare(bootstrap: str, rate: float, duration_s: float, folder: Path) -> dict[str, Any]:
    await ingest_bench._create_bare_topic(bootstrap)
    port = processes.free_port()
    server = ingest_bench._start("bare", port, bootstrap, "", folder / "bare.log")
    out = folder / "bare-reads.txt"
    reader = processes.start([sys.executable, SCRIPT, "--read-bare", bootstrap], out)
    try:
        processes.wait_until(lambda: "ready" in out.read_text(), 60, "bare reader", reader)
        wall_offset_s = time.time() - time.monotonic()
        sender = soak.FixedRateSender(f"http://127.0.0.1:{port}", rate, duration_s)
        async with soak.RssSampler({"bare": server.pid}) as sampler:
            deliveries = await sender.run()

        async def all_read() -> bool:
            return len(_bare_reads(out)) >= len(deliveries)

        await flows.eventually(all_read, "every bare record read back", 60)
    finally:
        processes.stop(reader)
        processes.stop(server)
    read_at = {n: at - wall_offset_s for n, at in _bare_reads(out).items()}
    accepted = [d for d in deliveries if d.accepted]
    span = max(d.answered_at for d in deliveries) - min(d.sent_at for d in deliveries)
    answers = [d.answered_at - d.sent_at for d in accepted]
    e2e = [read_at[n] - d.answered_at for n, d in enumerate(deliveries) if d.accepted and n in read_at]
    memory = soak.memory_figures(sampler, duration_s)["bare"]
    return {
        "deliveries": len(deliveries),
        "accepted": len(accepted),
        "sustained_per_s": round(len(accepted) / span, 2),
        "missed_slots": len(sender.missed()),
        "answer_p50_ms": round(soak.percentile(answers, 0.5) * 1000, 1),
        "answer_p99_ms": round(soak.percentile(answers, 0.99) * 1000, 1),
        "e2e_p50_ms": round(soak.percentile(e2e, 0.5) * 1000, 1),
        "e2e_p99_ms": round(soak.percentile(e2e, 0.99) * 1000, 1),
        "rss_bare_start_mb": round(memory.start / MB, 1),
        "rss_bare_end_mb": round(memory.end / MB, 1),
        "rss_bare_late_growth_mb": round(memory.growth / MB, 2),
    }


def run(rate: float, duration_s: float, baseline_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlcd-soak-") as raw_tmp:
        folder = Path(raw_tmp)
        with bus_bench.tansu(folder) as bootstrap, bus_bench.postgres_database(PG_ADMIN_DSN) as database_url:
            env = soak.service_env(bootstrap, database_url, folder / "home", f"soak{int(time.time())}.")
            started = time.monotonic()
            with soak.pipeline(env, folder) as line:
                setup_s = time.monotonic() - started
                result = asyncio.run(soak.soak(line, rate, duration_s, bootstrap))
            bare = asyncio.run(_bare(bootstrap, rate, baseline_s, folder)) if baseline_s else None
    mlcd = result.figures()
    figures: dict[str, Any] = {"setup_s": round(setup_s, 1), "mlcd": mlcd, "bare": bare}
    figures["problems"] = result.problems()
    figures["memory"] = {name: m.line() for name, m in result.memory.items()}
    figures["rss_samples_kb"] = {
        name: [[round(at, 1), rss // 1024] for at, rss in samples]
        for name, samples in result.rss_samples.items()
    }
    if bare is not None:
        figures["ratios_mlcd_over_bare"] = {
            key: round(mlcd[key] / bare[key], 2)
            for key in ("sustained_per_s", "answer_p50_ms", "answer_p99_ms", "e2e_p50_ms", "e2e_p99_ms")
            if mlcd.get(key) and bare.get(key)
        }
    return figures


def _print(figures: dict[str, Any], rate: float, duration_s: float, baseline_s: float) -> None:
    mlcd, bare = figures["mlcd"], figures["bare"] or {}
    print(f"soak: MinIO notifications at {rate:g}/s, mlcd {duration_s:g} s, bare baseline {baseline_s:g} s")
    print(f"(set-up of broker, database, ingest and probe: {figures['setup_s']} s)")
    rows = [
        ("deliveries sent", "deliveries"),
        ("accepted (2xx)", "accepted"),
        ("sustained accepted/s", "sustained_per_s"),
        ("missed send slots", "missed_slots"),
        ("answer p50 ms", "answer_p50_ms"),
        ("answer p99 ms", "answer_p99_ms"),
        ("answered → consumed p50 ms", "e2e_p50_ms"),
        ("answered → consumed p99 ms", "e2e_p99_ms"),
    ]
    print(f"{'':<30}{'mlcd':>12}{'bare':>12}{'mlcd/bare':>12}")
    ratios = figures.get("ratios_mlcd_over_bare", {})
    for label, key in rows:
        ratio = ratios.get(key, "")
        print(f"{label:<30}{mlcd.get(key, '')!s:>12}{bare.get(key, '')!s:>12}{ratio!s:>12}")
    print(
        "resident memory (sampled every second; late growth = median of last third - median of middle third)"
    )
    for line in figures["memory"].values():
        print(f"  {line}")
    if bare:
        print(
            f"  bare     start {bare['rss_bare_start_mb']:7.1f} MB   end {bare['rss_bare_end_mb']:7.1f} MB"
            f"   late growth {bare['rss_bare_late_growth_mb']:+6.2f} MB"
        )
    print(
        f"events checked: {mlcd['events_checked']} (journal, inbox, effect, reply each exactly once); "
        f"extra copies on the bus: {mlcd['bus_copies_over_one']}; "
        f"drained {mlcd['drain_s']} s after the last answer"
    )
    print("problems: " + ("; ".join(figures["problems"]) or "none"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mlcd soak (default 60)")
    parser.add_argument(
        "--baseline-duration", type=float, default=20.0, help="seconds of the bare baseline; 0 skips it"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--read-bare", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_bare:
        asyncio.run(_read_bare(args.read_bare))
        return
    if args.rate <= 0 or args.duration < 3:
        parser.error("--rate must be positive and --duration at least 3 s")
    figures = run(args.rate, args.duration, args.baseline_duration)
    if args.json:
        print(json.dumps(figures))
    else:
        _print(figures, args.rate, args.duration, args.baseline_duration)


if __name__ == "__main__":
    main()
