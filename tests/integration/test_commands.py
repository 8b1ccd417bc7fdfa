"""`mlcd db` against real stores, and `mlcd events` and `mlcd dlq` through the mlcd API served on a loopback
port over real stores, as a user at a terminal sees them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from mlcd import auth, events, http, journal_api
from mlcd.commands import db as db_command
from mlcd.commands import dlq as dlq_command
from mlcd.commands import events as events_command
from mlcd.local import endpoint
from mlcd.store import dead_letters, outbox
from mlcd.store.database import create_engine
from tests.support import flows, ingest_app, processes
from tests.support.mlcd_service import MLCD, REPO

TOKENS = {
    "reader-token": auth.Identity("rita", frozenset({"developers"})),
    "admin-token": auth.Identity("root", frozenset({"admin"})),
}


@pytest.fixture
def api_url(store_url: str, engine: AsyncEngine) -> Iterator[str]:
    """The journal and dead-letter API over the test's (migrated) store, on a free loopback port."""

    @asynccontextmanager
    async def make_app() -> AsyncIterator[FastAPI]:
        served = create_engine(store_url)

        async def ready() -> dict[str, str | None]:
            return {}

        yield http.create_app([journal_api.router(lambda: served, TOKENS.get)], ready)
        await served.dispose()

    with ingest_app.serving_in_thread(make_app) as url:
        yield url


def _api_env(url: str, token: str = "reader-token") -> dict[str, str]:
    return {"MLCD_API_URL": url, "MLCD_API_TOKEN": token}


def _invoke(app: typer.Typer, args: list[str], store_url: str) -> Any:
    return CliRunner().invoke(app, args, env={"MLCD_DATABASE_URL": store_url})


def _call(app: typer.Typer, args: list[str], url: str, token: str = "reader-token") -> Any:
    return CliRunner().invoke(app, args, env=_api_env(url, token))


def _event(model: str, minute: int, payload: events.Payload | None = None) -> events.Envelope[Any]:
    data = payload or events.RetrainRequested(model=model, reason=f"minute {minute}")
    time = datetime(2026, 11, 23, 12, minute, tzinfo=UTC)
    return events.new_event(data, source="mlcd/test", id=f"{model}-{minute}", time=time)


@pytest.fixture
async def journaled(engine: AsyncEngine) -> list[events.Envelope[Any]]:
    """Three journaled events, oldest first, plus one still waiting for the relay (not journaled)."""
    sent = [
        _event("wine_quality", 1),
        _event("churn", 2),
        _event("wine_quality", 3, events.NoticeRaised(model="wine_quality", message="drift")),
    ]
    async with engine.begin() as conn:
        await outbox.add(conn, sent, sent=True)
        await outbox.add(conn, [_event("wine_quality", 4)])
    return sent


def test_db_upgrade_creates_the_schema_and_current_reports_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    before = _invoke(db_command.app, ["current"], url)
    assert (before.exit_code, before.stdout.strip()) == (0, "none (run `mlcd db upgrade`)")

    upgraded = _invoke(db_command.app, ["upgrade"], url)
    assert upgraded.exit_code == 0
    revision = upgraded.stdout.strip().rpartition(" is at revision ")[2]
    assert revision and revision != "None"

    after = _invoke(db_command.app, ["current"], url)
    assert (after.exit_code, after.stdout.strip()) == (0, revision)


def test_db_command_against_an_unreachable_store_prints_one_line_and_exits_1() -> None:
    url = "postgresql+asyncpg://mlcd:hunter2@127.0.0.1:1/none"
    result = _invoke(db_command.app, ["current"], url)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: state store postgresql+asyncpg://mlcd:***@127.0.0.1:1/none")
    assert "hunter2" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_journal_commands_never_open_the_database(tmp_path: Path) -> None:
    """Set up with the API only (as production is), an unreachable API is an error, never an empty
    local store's false all-clear."""
    env = {"MLCD_API_URL": "http://127.0.0.1:1", "MLCD_API_TOKEN": "t", "MLCD_HOME": str(tmp_path / "h")}
    for app, args in ((events_command.app, ["list"]), (dlq_command.app, ["list"])):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith("error: cannot reach the mlcd API at http://127.0.0.1:1")
    assert not (tmp_path / "h").exists()


def test_commands_find_the_api_and_token_mlcd_up_recorded(
    journaled: list[events.Envelope[Any]], api_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("reader-token\n")
    endpoint.record(tmp_path, api_url, token_file)
    result = CliRunner().invoke(events_command.app, ["list", "--json"], env={"MLCD_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3


def test_events_list_prints_journaled_cloudevents_newest_first(
    journaled: list[events.Envelope[Any]], api_url: str
) -> None:
    result = _call(events_command.app, ["list", "--json"], api_url)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["id"] for e in lines] == ["wine_quality-3", "churn-2", "wine_quality-1"]
    assert lines[-1] == {**journaled[0].structured(), "time": "2026-11-23T12:01:00+00:00"}


def _ids(json_lines: str, field: str = "id") -> list[str]:
    return [json.loads(line)[field] for line in json_lines.splitlines()]


def test_events_list_filters_by_model_and_type(journaled: list[events.Envelope[Any]], api_url: str) -> None:
    by_model = _call(events_command.app, ["list", "--json", "--model", "wine_quality"], api_url)
    assert [json.loads(line)["id"] for line in by_model.stdout.splitlines()] == [
        "wine_quality-3",
        "wine_quality-1",
    ]
    by_type = _call(events_command.app, ["list", "--json", "--type", events.NoticeRaised.type], api_url)
    assert [json.loads(line)["id"] for line in by_type.stdout.splitlines()] == ["wine_quality-3"]
    limited = _call(events_command.app, ["list", "--json", "--limit", "1"], api_url)
    assert len(limited.stdout.splitlines()) == 1


def test_events_list_as_a_table_shows_type_model_and_id(
    journaled: list[events.Envelope[Any]], api_url: str
) -> None:
    result = _call(events_command.app, ["list", "--model", "churn"], api_url)
    assert result.exit_code == 0
    [line] = result.stdout.splitlines()
    assert "mlcd.training.retrain_requested.v1" in line and "churn" in line and "churn-2" in line


def test_events_list_says_so_when_nothing_matches(
    journaled: list[events.Envelope[Any]], api_url: str
) -> None:
    result = _call(events_command.app, ["list", "--model", "nobody"], api_url)
    assert (result.exit_code, result.stdout.strip()) == (0, "no events journaled matching the filters")


async def test_events_tail_prints_events_as_they_are_journaled(
    journaled: list[events.Envelope[Any]], engine: AsyncEngine, api_url: str
) -> None:
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from mlcd.commands.events import app; app(prog_name='mlcd events')",
        "tail",
        "--json",
        "--model",
        "wine_quality",
        env={**os.environ, **_api_env(api_url)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        banner = await asyncio.wait_for(tail.stderr.readline(), 30)
        assert banner.startswith(b"following the journal")
        async with engine.begin() as conn:
            await outbox.add(conn, [_event("churn", 5), _event("wine_quality", 6)], sent=True)
            # The relay sends the row that was waiting: seq order is kept even though it was sent later.
            pending = await outbox.unsent(conn, 10)
            await outbox.mark_sent(conn, [p.seq for p in pending])
        first = json.loads(await asyncio.wait_for(tail.stdout.readline(), 30))
        second = json.loads(await asyncio.wait_for(tail.stdout.readline(), 30))
        assert {first["id"], second["id"]} == {"wine_quality-4", "wine_quality-6"}
    finally:
        tail.terminate()
        await tail.wait()


async def _park_two(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for minute in (1, 2):
            record = events.encode(_event("wine_quality", minute))
            await dead_letters.park(conn, "mlcd-trainer", record, "AdapterUnavailable: KFP did not answer", 5)


async def test_dlq_list_shows_what_waits_and_replay_queues_it_for_the_relay(
    engine: AsyncEngine, api_url: str
) -> None:
    await _park_two(engine)
    env = _api_env(api_url, "admin-token")
    code, table, _ = await flows.mlcd_command("dlq", "list", env=env)
    assert code == 0
    assert "mlcd-trainer" in table and "AdapterUnavailable: KFP did not answer" in table
    assert len(table.splitlines()) == 3

    letters = [
        json.loads(line)
        for line in (await flows.mlcd_command("dlq", "list", "--json", env=env))[1].splitlines()
    ]
    first_id = min(letter["id"] for letter in letters)
    code, out, _ = await flows.mlcd_command("dlq", "replay", str(first_id), env=env)
    assert (code, out.strip()) == (
        0,
        "replayed 1 dead letter(s); the relay publishes them to their original topics",
    )
    async with engine.connect() as conn:
        [pending] = await outbox.unsent(conn, 10)
    assert pending.record.topic == "mlcd.training" and pending.record.header("ce_id") == "wine_quality-1"

    code, _, err = await flows.mlcd_command("dlq", "replay", str(first_id), env=env)
    assert code == 1 and "already replayed" in err
    code, out, err = await flows.mlcd_command("dlq", "replay", env=_api_env(api_url, "reader-token"))
    assert (code, out) == (1, "") and err.startswith("error: 403: rita is in none of the groups")
    code, waiting, _ = await flows.mlcd_command("dlq", "list", "--json", env=env)
    assert _ids(waiting, "event_id") == ["wine_quality-2"]
    code, everything, _ = await flows.mlcd_command("dlq", "list", "--all", env=env)
    assert "[replayed]" in everything


def test_dlq_list_on_an_empty_store_says_nothing_waits(engine: AsyncEngine, api_url: str) -> None:
    result = _call(dlq_command.app, ["list"], api_url)
    assert (result.exit_code, result.stdout.strip()) == (
        0,
        "no dead letters waiting (--all shows replayed ones)",
    )


def test_commands_find_the_running_mlcd_up_by_its_home(tmp_path: Path) -> None:
    """`mlcd up --port P` records its URL and token file in MLCD_HOME; a command given only MLCD_HOME
    reaches it, and after a clean stop the record is gone."""
    home = tmp_path / "home"
    port = processes.free_port()
    env = {
        "MLCD_HOME": str(home),
        "MLCD_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLCD_POLICIES_DIR": str(REPO / "policies"),
    }
    server = processes.start([MLCD, "up", "--port", str(port)], tmp_path / "up.log", env=env, cwd=REPO)
    try:
        processes.wait_until(lambda: (home / endpoint.FILE_NAME).exists(), 120, "mlcd up", server)
        recorded = endpoint.read(home)
        assert recorded is not None and recorded.url == f"http://127.0.0.1:{port}"
        listed = subprocess.run(
            [MLCD, "gates", "list"],
            env={**os.environ, "MLCD_HOME": str(home)},
            capture_output=True,
            text=True,
        )
        assert (listed.returncode, listed.stdout.strip()) == (0, "no gates"), listed.stderr
        # at every start it says where to look, where the token is and where data batches land
        processes.wait_until(lambda: "data batches" in (tmp_path / "up.log").read_text(), 30, "the banner")
        banner = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/ui" in banner and str(home / "admin-token") in banner
        landing = home / "objects" / "landing" / "wine_quality"
        assert f"data batches   {landing}/" in banner and landing.is_dir()
    finally:
        processes.stop(server, timeout_s=60)
    assert server.returncode == 0
    assert not (home / endpoint.FILE_NAME).exists()


def test_mlcd_up_refuses_a_tokens_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "tokens.yaml"
    env = {**os.environ, "MLCD_HOME": str(tmp_path / "home"), "MLCD_API_TOKENS_FILE": str(missing)}
    done = subprocess.run(
        [MLCD, "up", "--port", str(processes.free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done
    assert done.stderr.startswith(f"error: MLCD_API_TOKENS_FILE {missing} does not exist")
    assert not missing.parent.exists()  # no token was written beside a path nobody created


@pytest.mark.parametrize("why", ["port-overflow", "port-in-use"])
def test_mlcd_up_on_a_port_it_cannot_use_fails_with_one_line_before_it_starts_anything(
    tmp_path: Path, why: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = 65530 if why == "port-overflow" else taken.getsockname()[1]
        env = {**os.environ, "MLCD_HOME": str(tmp_path / "home")}
        done = subprocess.run([MLCD, "up", "--port", str(port)], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    expected = "leaves no port for the embedded MLflow" if why == "port-overflow" else "cannot listen on"
    assert expected in done.stderr
    assert not (tmp_path / "home" / "mlflow").exists(), "no MLflow server was started"


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_mlcd_up_starts_stops_its_embedded_mlflow(tmp_path: Path, signal_number: int) -> None:
    home = tmp_path / "home"
    server = subprocess.Popen(
        [MLCD, "up", "--port", str(processes.free_port())],
        env={**os.environ, "MLCD_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # as a terminal's Ctrl-C reaches it: a shell may have started the test with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        processes.wait_until(
            lambda: (home / "mlflow" / "server.log").exists(), 60, "the MLflow start", server
        )
        mlflow_group = _mlflow_process_group(home)
        server.send_signal(signal_number)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 128 + signal_number, stderr
    assert b"Traceback" not in stderr
    processes.wait_until(lambda: not _group_alive(mlflow_group), 30, "the embedded MLflow server to stop")


def _mlflow_process_group(home: Path) -> int:
    """The process group of the MLflow server that `mlcd up` spawned for `home`."""
    found: list[int] = []

    def spawned() -> bool:
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"server" in argv and any(str(home / "mlflow").encode() in a for a in argv):
                found.append(os.getpgid(int(entry.name)))
                return True
        return False

    processes.wait_until(spawned, 30, "the embedded MLflow server process")
    return found[0]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
