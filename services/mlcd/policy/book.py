"""The set of policies in force, one per model, reloaded when a file changes.

A broken edit keeps the last good version of that model's policy in force and is reported loudly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlcd import logs
from mlcd.errors import ConfigError
from mlcd.policy.rules import CompiledPolicy, compile_policy
from mlcd.policy.schema import Policy

log = logs.get(__name__)
DEFAULTS_FILE = "defaults.yaml"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_file(path: Path, defaults: dict[str, Any] | None = None) -> Policy:
    """Parse and validate one model's policy file; ConfigError names the file and what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a policy file is a YAML mapping")
    try:
        return Policy.model_validate(_merge(defaults or {}, raw))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from e


@dataclass(frozen=True)
class _Loaded:
    stamp: float
    policy: Policy
    compiled: CompiledPolicy | None = None


class PolicyBook:
    """Policies by model; `refresh()` rereads changed files (cheap: one stat per file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[Path, _Loaded] = {}
        self._defaults: dict[str, Any] = {}
        self._defaults_stamp = -1.0
        self.errors: dict[Path, str] = {}

    def refresh(self) -> None:
        defaults_changed = self._refresh_defaults()
        paths = sorted(p for p in self.folder.glob("*.y*ml") if p.name != DEFAULTS_FILE)
        for gone in set(self._loaded) - set(paths):
            del self._loaded[gone]
        for path in paths:
            stamp = _stamp(path)
            current = self._loaded.get(path)
            if current is not None and current.stamp == stamp and not defaults_changed:
                continue
            try:
                policy = load_file(path, self._defaults)
                self._loaded[path] = _Loaded(stamp, policy, _compiled(path, policy))
                self.errors.pop(path, None)
            except ConfigError as e:
                self._reject(path, str(e))

    def _refresh_defaults(self) -> bool:
        """Reread defaults.yaml if it changed (True: new defaults apply); a broken one keeps the last good."""
        path = self.folder / DEFAULTS_FILE
        stamp = _stamp(path)
        if stamp == self._defaults_stamp:
            return False
        self._defaults_stamp = stamp
        try:
            defaults = (yaml.safe_load(path.read_text()) or {}) if stamp else {}
        except (OSError, yaml.YAMLError) as e:
            self._reject(path, f"{path}: {e}")
            return False
        if not isinstance(defaults, dict):
            self._reject(path, f"{path}: the defaults file is a YAML mapping")
            return False
        self._defaults = defaults
        self.errors.pop(path, None)
        return True

    def _reject(self, path: Path, problem: str) -> None:
        if self.errors.get(path) != problem:
            log.error("policy edit rejected; the last good version stays in force", problem=problem)
        self.errors[path] = problem

    def all(self) -> list[Policy]:
        self.refresh()
        return [loaded.policy for loaded in self._loaded.values()]

    def get(self, model: str) -> Policy | None:
        return next((p for p in self.all() if p.model == model), None)

    def require(self, model: str) -> Policy:
        policy = self.get(model)
        if policy is None:
            raise ConfigError(f"no policy for model {model!r} in {self.folder}")
        return policy

    def compiled(self, model: str) -> CompiledPolicy:
        """The model's rules, compiled when its file was (re)loaded; ConfigError if it has no policy."""
        policy = self.require(model)
        loaded = next(item for item in self._loaded.values() if item.policy is policy)
        return loaded.compiled or compile_policy(policy)

    def for_code(self, project: str, branch: str | None = None) -> list[Policy]:
        """Policies whose code lives in `project` (and, if given, watches `branch`)."""
        return [
            p
            for p in self.all()
            if p.code is not None
            and p.code.project == project
            and (branch is None or p.code.branch == branch)
        ]

    def for_object(self, bucket: str, key: str) -> Policy | None:
        return next((p for p in self.all() if p.data is not None and p.data.covers(bucket, key)), None)


def _compiled(path: Path, policy: Policy) -> CompiledPolicy:
    try:
        return compile_policy(policy)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _stamp(path: Path) -> float:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0.0
    return stat.st_mtime_ns + stat.st_size
