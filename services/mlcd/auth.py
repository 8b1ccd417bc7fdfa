"""API tokens and webhook secrets: constant-time checks, groups for authorisation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlcd.errors import ConfigError


def secret_matches(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an unset expected secret never matches (the source stays closed)."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    groups: list[str] = Field(default_factory=list)
    token_sha256: str


@dataclass(frozen=True)
class Identity:
    name: str
    groups: frozenset[str]

    def in_any(self, groups: list[str] | frozenset[str]) -> bool:
        return "admin" in self.groups or bool(self.groups & set(groups))


class TokenBook:
    """The API tokens of `MLCD_API_TOKENS_FILE`, only their SHA-256 kept."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> TokenBook:
        try:
            raw = yaml.safe_load(path.read_text()) or []
            return cls([TokenEntry.model_validate(item) for item in raw])
        except (OSError, yaml.YAMLError, ValidationError, TypeError) as e:
            raise ConfigError(f"API tokens file {path} is unreadable: {e}") from e

    def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: TokenEntry | None = None
        for entry in self._entries:  # compare with every entry so timing does not reveal which matched
            if hmac.compare_digest(digest, entry.token_sha256.lower()):
                found = entry
        return Identity(found.name, frozenset(found.groups)) if found else None


def ensure_tokens_file(path: Path) -> str | None:
    """Write a tokens file with a fresh admin token if none exists; returns that token, else None."""
    if path.exists():
        return None
    token = "mlcd_" + secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "name": "admin",
        "groups": ["admin", "oncall"],
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    path.write_text(yaml.safe_dump([entry]))
    path.chmod(0o600)
    (path.parent / "admin-token").write_text(token + "\n")
    (path.parent / "admin-token").chmod(0o600)
    return token
