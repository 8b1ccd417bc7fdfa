"""kill -9 of the notifier process in the middle of a message: after a restart each notice reached the
loopback Slack-compatible receiver exactly once, on the real broker and PostgreSQL.

The receiver holds the fourth message unanswered while the process is killed: that message was sent but
never acknowledged, so it is sent again; the three acknowledged before it are not, although their events
are redelivered (their offsets and inbox rows were not committed yet).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from sqlalchemy import select

from mlcd import events
from mlcd.bus.kafka import KafkaBus
from mlcd.store import notices
from mlcd.store.database import create_engine
from tests.support import processes
from tests.support.chat_receiver import ChatReceiver

REPO = Path(__file__).resolve().parents[2]
COUNT = 8
HELD = 4


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return processes.start([sys.executable, "-m", "tests.support.notifier_process"], log, env=env, cwd=REPO)


async def test_each_notice_reaches_the_channel_once_across_a_kill_9(
    kafka_bootstrap: str, pg_url: str, tmp_path: Path
) -> None:
    model = f"killed_{uuid.uuid4().hex[:8]}"
    namespace = f"nk{uuid.uuid4().hex[:6]}."
    with ChatReceiver(hold_at=HELD) as slack:
        folder = tmp_path / "policies"
        folder.mkdir()
        policy = {"model": model, "notify": {"channels": [{"kind": "slack", "url": slack.url()}]}}
        (folder / f"{model}.yaml").write_text(yaml.safe_dump(policy))
        env = {
            "MLCD_HOME": str(tmp_path / "home"),
            "MLCD_POLICIES_DIR": str(folder),
            "MLCD_DATABASE_URL": pg_url,
            "MLCD_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "MLCD_KAFKA_NAMESPACE": namespace,
            "MLCD_KAFKA_SESSION_TIMEOUT_S": "6",
            "MLCD_KAFKA_HEARTBEAT_INTERVAL_S": "1",
            "MLCD_HANDLER_BACKOFF_INITIAL_S": "0.05",
        }
        first = _start(env, tmp_path / "notifier-1.log")
        producer = KafkaBus(kafka_bootstrap, events.TOPICS, namespace=namespace)
        await producer.start()
        second: subprocess.Popen[bytes] | None = None
        engine = create_engine(pg_url)
        try:
            told = [
                events.new_event(
                    events.NoticeRaised(model=model, message=f"drift {i}"),
                    source="mlcd/test",
                    id=f"{model}-{i}",
                )
                for i in range(COUNT)
            ]
            await producer.publish([events.encode(e) for e in told])
            await asyncio.to_thread(processes.wait_until, slack.holding.is_set, 90, "the held message", first)
            os.killpg(first.pid, signal.SIGKILL)  # no drain, no clean-up: as a node failure would
            first.wait(10)
            slack.release()

            second = _start(env, tmp_path / "notifier-2.log")

            def all_sent() -> bool:
                return len(slack.delivered) >= COUNT

            await asyncio.to_thread(processes.wait_until, all_sent, 120, "every notice delivered", second)

            async with engine.connect() as conn:
                rows = list(await conn.execute(select(notices.notices.c.event_id, notices.notices.c.state)))
            assert sorted(rows) == sorted((e.id, "sent") for e in told)
            processes.stop(second)  # drained: nothing more can be sent after this
            second = None
        finally:
            await producer.stop()
            await engine.dispose()
            for process in (first, second):
                if process is not None:
                    processes.stop(process)

    delivered = slack.texts()
    assert sorted(delivered) == sorted(set(delivered)), "a notice was delivered twice"
    assert sorted(t.split("\n")[1] for t in delivered) == sorted(f"drift {i}" for i in range(COUNT))
    # The held one was sent twice, acknowledged once: the one repeat a crash can cause, never acknowledged.
    assert len(slack.received) == COUNT + 1
