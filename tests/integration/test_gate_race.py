"""Two on-call engineers deciding the same gate at the same moment from two processes: one decision wins."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from mlcd import events
from mlcd.store import database, gates, migrate
from mlcd.store.tables import outbox
from tests.conftest import REPO

ROUNDS = 12


def _gate(n: int) -> gates.Gate:
    now = datetime.now(UTC)
    return gates.Gate(
        id=gates.gate_id_for(f"race-{n}"),
        model="wine_quality",
        model_version=str(n),
        champion_version=None,
        state="open",
        rules=[],
        approvals_required=1,
        approver_groups=["oncall"],
        author="alice",
        project="ml/wine-quality",
        commit="",
        created_at=now,
        expires_at=now + timedelta(hours=1),
        cause_event_id=f"race-{n}",
    )


@pytest.fixture
def racers(pg_url: str) -> Iterator[list[subprocess.Popen[str]]]:
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.gate_racer", pg_url, actor, decision],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for actor, decision in (("olivia", "approve"), ("oscar", "reject"))
    ]
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.postgres
async def test_racing_decisions_from_two_processes_let_exactly_one_win(
    pg_url: str, racers: list[subprocess.Popen[str]]
) -> None:
    engine = database.create_engine(pg_url)
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        opened = [await gates.open_gate(conn, _gate(n)) for n in range(ROUNDS)]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"

    outcomes: list[list[str]] = []
    for gate in opened:
        for racer in racers:  # both hear the gate id before either answers
            assert racer.stdin is not None
            racer.stdin.write(gate.id + "\n")
            racer.stdin.flush()
        outcomes.append([json.loads(racer.stdout.readline())["status"] for racer in racers if racer.stdout])

    assert all(sorted(pair) == ["accepted", "conflict"] for pair in outcomes), outcomes
    async with engine.connect() as conn:
        final = [await gates.get(conn, gate.id) for gate in opened]
        decisions = await conn.scalar(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.event_type.in_([events.PromotionApproved.type, events.PromotionRejected.type]))
        )
        audits = [await gates.audit_log(conn, gate.id) for gate in opened]
    await engine.dispose()
    assert decisions == ROUNDS
    for decided, entries in zip(final, audits, strict=True):
        assert decided is not None and decided.state in {"approved", "rejected"}
        winner = {"approved": "olivia", "rejected": "oscar"}[decided.state]
        assert decided.decided_by == winner
        assert sorted((e.actor, e.outcome) for e in entries) == sorted(
            [(winner, "accepted"), ({"olivia", "oscar"}.difference({winner}).pop(), "refused")]
        )
