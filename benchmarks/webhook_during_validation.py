"""Webhook answers while a large batch validates, under `mlcd up` (SQLite, the embedded default).

A GitLab push is sent every 50 ms to `/hooks/gitlab` before and while a ~47 MB wine-quality batch
(694,000 rows) lands in the object folder and the validator runs its Great Expectations suite on it.
Prints p50, p99 and the slowest answer of each phase, and how long the validation took. A validation
held inside the consumer's transaction kept SQLite's write lock, and every webhook waited for it.

`--tree DIR` runs another checkout's `services/` (e.g. a `git worktree` of an older commit) with this
venv, so the figure before a change and after it come from the same machine and run.
Run: .venv/bin/python benchmarks/webhook_during_validation.py [--rows 694000] [--tree DIR] [--json]
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
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import processes  # noqa: E402

PUSH = json.loads((REPO / "tests" / "fixtures" / "ingest" / "gitlab_push.json").read_text())
SECRET = "bench-secret"
INTERVAL_S = 0.05


def _write_batch(path: Path, rows: int) -> int:
    """The wine data set repeated to `rows` rows: 694,000 of them are the issue's 47 MB batch."""
    import pandas as pd
    from sklearn.datasets import load_wine

    wine: pd.DataFrame = load_wine(as_frame=True).frame
    repeats = -(-rows // len(wine))
    big = pd.concat([wine] * repeats, ignore_index=True).iloc[:rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    big.to_csv(path, index=False)
    return path.stat().st_size


async def _pushes(client: httpx.AsyncClient, until: asyncio.Event, latencies: list[float]) -> None:
    while not until.is_set():
        body = {**PUSH, "checkout_sha": uuid.uuid4().hex + uuid.uuid4().hex[:8]}
        headers = {
            "X-Gitlab-Token": SECRET,
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        }
        started = time.perf_counter()
        answer = await client.post("/hooks/gitlab", json=body, headers=headers)
        latencies.append(time.perf_counter() - started)
        if answer.status_code >= 300:
            raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")
        await asyncio.sleep(max(0.0, INTERVAL_S - latencies[-1]))


async def _validated(client: httpx.AsyncClient, token: str) -> bool:
    answer = await client.get(
        "/api/v1/events",
        params={"model": "wine_quality", "limit": 50},
        headers={"Authorization": f"Bearer {token}"},
    )
    types = {e["type"] for e in answer.json()} if answer.status_code == 200 else set()
    return bool(types & {"mlcd.data.validated.v1", "mlcd.data.rejected.v1"})


def _figures(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def run(rows: int, tree: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mlcd-bench-validate-"))
    home, port = root / "home", processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree / 'services'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MLCD_HOME": str(home),
        "MLCD_HTTP_PORT": str(port),
        "MLCD_GITLAB_WEBHOOK_SECRET": SECRET,
        "MLCD_LOG_LEVEL": "WARNING",
        "MLCD_POLICIES_DIR": str(tree / "policies"),
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "mlcd.cli", "up", "--port", str(port)],
        cwd=tree,
        env=env,
        stdout=(root / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"mlcd up did not get ready; see {root / 'up.log'}")
                await asyncio.sleep(0.5)
            token = (home / "admin-token").read_text().strip()
            staged = root / "big.csv"
            size = await asyncio.to_thread(_write_batch, staged, rows)

            quiet: list[float] = []
            stop = asyncio.Event()
            sender = asyncio.create_task(_pushes(client, stop, quiet))
            await asyncio.sleep(5)
            stop.set()
            await sender

            during: list[float] = []
            stop = asyncio.Event()
            landing = home / "objects" / "landing" / "wine_quality"
            landing.mkdir(parents=True, exist_ok=True)
            landed_at = time.monotonic()
            staged.rename(landing / "big.csv")
            sender = asyncio.create_task(_pushes(client, stop, during))
            while not await _validated(client, token):
                if time.monotonic() - landed_at > 600:
                    raise RuntimeError("the batch was not validated within 10 minutes")
                await asyncio.sleep(0.25)
            validation_s = time.monotonic() - landed_at
            stop.set()
            await sender
    finally:
        process.terminate()
        process.wait(60)
    return {
        "tree": str(tree),
        "rows": rows,
        "batch_mb": round(size / 1e6, 1),
        "validation_s": round(validation_s, 1),
        "quiet": _figures(quiet),
        "during_validation": _figures(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=694_000)
    parser.add_argument("--tree", type=Path, default=REPO)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.rows, args.tree.resolve()))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"tree {result['tree']}: {result['rows']} rows, {result['batch_mb']} MB, "
        f"validated in {result['validation_s']} s"
    )
    for phase in ("quiet", "during_validation"):
        f = result[phase]
        print(
            f"  {phase:18} n={f['n']:4}  p50 {f['p50_ms']:7.1f} ms  "
            f"p99 {f['p99_ms']:7.1f} ms  max {f['max_ms']:7.1f} ms"
        )
    quiet, during = result["quiet"], result["during_validation"]
    print(
        f"  during / quiet (the same run's baseline): p99 {during['p99_ms'] / quiet['p99_ms']:.1f}x, "
        f"max {during['max_ms'] / quiet['max_ms']:.1f}x"
    )


if __name__ == "__main__":
    main()
