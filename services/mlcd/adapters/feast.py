"""Feast feature repositories: `feast plan` and `feast apply` on a checked-out repository, in a child process.

Feast 0.67 needs pandas<3 and mlcd's environment has pandas 3, so the builder runs Feast's own CLI from a
virtualenv of its own (MLCD_FEAST_BIN, `make feast-venv`), killed after a timeout, with mlcd's MLCD_*
settings (tokens among them) left out of its environment: feature definitions are user code. Feast's
usage reporting is switched off.

The checkout is a temporary folder, so before Feast runs, the repository's feature_store.yaml is pointed
at a registry that outlives it: the policy's, else the repository's own when absolute or remote, else a
file under the model's state folder; a relative SQLite online store (the local provider's) moves there too.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from mlcd.errors import ConfigError, MlcdError

CONFIG_FILE = "feature_store.yaml"
_SQL_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql", "oracle")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHANGE = re.compile(r"^(Created|Updated|Deleted|Removed)\s+\S")
_OUTPUT_LIMIT = 1 << 20
_REPO_FRAME = re.compile(r'File "([^"/<][^"]*)", line (\d+)')  # paths made relative to the checkout


class FeastFailed(MlcdError):
    """Feast refused the repository (a definition error, a source it cannot read, a registry it cannot
    reach); the message is what Feast said."""


@dataclass(frozen=True)
class Outcome:
    output: str
    changes: list[str]


def effective_config(config: dict[str, Any], registry: str | None, state_dir: Path) -> dict[str, Any]:
    """The repository's feature_store.yaml with the registry (and a relative SQLite online store) moved
    where they outlive the checkout. `registry`: the policy's, which wins when given."""
    result = dict(config)
    if registry is not None:
        result["registry"] = _registry_entry(registry)
    elif not _lasting(_registry_path(config.get("registry"))):
        result["registry"] = str(state_dir / "registry.db")
    online = config.get("online_store")
    if (config.get("provider", "local") == "local" and online is None) or (
        isinstance(online, dict) and online.get("type", "sqlite") == "sqlite"
    ):
        entry = dict(online or {"type": "sqlite"})
        if not Path(str(entry.get("path", "data/online.db"))).is_absolute():
            entry["path"] = str(state_dir / "online.db")
        result["online_store"] = entry
    return result


def registry_label(config: dict[str, Any]) -> str:
    """Where the registry is, as people may read it: a URL's password left out."""
    path = _registry_path(config.get("registry"))
    parts = urlsplit(path)
    if parts.password is None:
        return path
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _registry_entry(registry: str) -> str | dict[str, Any]:
    scheme = registry.split("://", 1)[0].split("+", 1)[0] if "://" in registry else ""
    if scheme in _SQL_SCHEMES:
        return {"registry_type": "sql", "path": registry, "cache_ttl_seconds": 60}
    return registry


def _registry_path(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("path", ""))
    return str(entry or "")


def _lasting(path: str) -> bool:
    return "://" in path or Path(path).is_absolute()


def prepare(repo: Path, registry: str | None, state_dir: Path) -> dict[str, Any]:
    """Rewrite `repo`'s feature_store.yaml (see `effective_config`) and return what it now says."""
    source = repo / CONFIG_FILE
    if not source.is_file():
        raise FeastFailed(f"no {CONFIG_FILE} in the feature repository")
    try:
        config = yaml.safe_load(source.read_text())
    except yaml.YAMLError as e:
        raise FeastFailed(f"{CONFIG_FILE} is not YAML: {' '.join(str(e).split())}") from e
    if not isinstance(config, dict) or not config.get("project"):
        raise FeastFailed(f"{CONFIG_FILE} names no project")
    state_dir.mkdir(parents=True, exist_ok=True)
    effective = effective_config(config, registry, state_dir)
    source.write_text(yaml.safe_dump(effective, sort_keys=False))
    return effective


async def plan(repo: Path, feast_bin: Path, timeout_s: float) -> Outcome:
    """`feast plan`: what an apply would change in the registry and the infrastructure."""
    return await _run(feast_bin, "plan", repo, timeout_s)


async def apply(repo: Path, feast_bin: Path, timeout_s: float) -> Outcome:
    """`feast apply`: register the repository's definitions and create their online tables."""
    return await _run(feast_bin, "apply", repo, timeout_s)


async def _run(feast_bin: Path, command: str, repo: Path, timeout_s: float) -> Outcome:
    executable = await asyncio.to_thread(_executable, feast_bin)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLCD_")}
    environment.update(FEAST_USAGE="False", NO_COLOR="1")
    process = await asyncio.create_subprocess_exec(
        executable,
        "--chdir",
        str(repo),
        command,
        cwd=repo,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=_OUTPUT_LIMIT,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as e:
        raise FeastFailed(f"feast {command} took longer than {timeout_s:g}s") from e
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    output = _ANSI.sub("", stdout.decode(errors="replace")).replace(str(repo) + "/", "")
    if process.returncode != 0:
        said = _ANSI.sub("", stderr.decode(errors="replace")).replace(str(repo) + "/", "")
        raise FeastFailed(_why(said, output, process.returncode))
    return Outcome(output, [line.strip() for line in output.splitlines() if _CHANGE.match(line.strip())])


def _executable(feast_bin: Path) -> str:
    """The command as an absolute path: a relative one (the default) is mlcd's, not the checkout's."""
    if not feast_bin.exists():
        raise ConfigError(
            f"MLCD_FEAST_BIN {feast_bin} does not exist: create it with `make feast-venv` "
            "(a virtualenv with feast==0.67.*)"
        )
    return os.path.abspath(feast_bin)


def _why(stderr: str, stdout: str, returncode: int | None) -> str:
    """The error Feast ended with (the last line of its traceback, else the last line it printed), after
    the repository file and line it came from, when it came from one."""
    said = stderr if stderr.strip() else stdout
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    if not lines:
        return f"feast exited with {returncode} and said nothing"
    frames = _REPO_FRAME.findall(said)
    return f"{frames[-1][0]}:{frames[-1][1]}: {lines[-1]}" if frames else lines[-1]
